// ws-exec: @kubernetes/client-node's WebSocket exec (its Exec class over its own
// WebSocketHandler: the subprotocols it offers, v5.channel.k8s.io first, its channel
// demultiplexing, its stdin and close signal) against a vmlet streaming URL. Exec builds an
// API-server path; the handler here is told the streaming URL's path instead, which is what
// kubelet does when it proxies. Prints one JSON line: protocol, stdout, stderr, the Status.
// Usage: node exec.mjs URL [STDIN]
import { PassThrough, Writable } from "node:stream";
import { Exec, KubeConfig } from "@kubernetes/client-node";
import { WebSocketHandler } from "@kubernetes/client-node/dist/web-socket-handler.js";

const [url, stdinText] = process.argv.slice(2);
const { origin, pathname } = new URL(url);
const kc = new KubeConfig();
kc.loadFromOptions({
  // client-node refuses a plain-http server unless told to skip TLS checks; there is no TLS.
  clusters: [{ name: "vmlet", server: origin, skipTLSVerify: true }],
  users: [{ name: "kubelet" }],
  contexts: [{ name: "vmlet", cluster: "vmlet", user: "kubelet" }],
  currentContext: "vmlet",
});
const collect = () => {
  const chunks = [];
  const w = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(Buffer.from(chunk));
      cb();
    },
  });
  w.text = () => Buffer.concat(chunks).toString();
  return w;
};
const stdout = collect();
const stderr = collect();
const out = { protocol: "", stdout: "", stderr: "", status: null, error: "" };
const handler = new WebSocketHandler(kc);
const toStreamingUrl = {
  connect: (_apiPath, text, binary) => handler.connect(pathname, text, binary),
};
let stdin = null;
if (stdinText !== undefined) {
  stdin = new PassThrough();
  stdin.end(stdinText);
}
try {
  const ws = await new Exec(kc, toStreamingUrl).exec(
    "default",
    "pod",
    "guest",
    ["ignored: the URL names the command"],
    stdout,
    stderr,
    stdin,
    false,
    (status) => {
      out.status = status;
    },
  );
  out.protocol = ws.protocol;
  await new Promise((resolve) => {
    if (ws.readyState === 3) resolve();
    ws.addEventListener("close", resolve);
  });
} catch (e) {
  out.error = String(e?.message ?? e);
}
out.stdout = stdout.text();
out.stderr = stderr.text();
console.log(JSON.stringify(out));
