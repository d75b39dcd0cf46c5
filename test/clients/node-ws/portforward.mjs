// ws-portforward: @kubernetes/client-node's PortForward (its WebSocketHandler: the
// subprotocols it offers, the 2-byte port it strips from each channel's first message, its
// channel 0 for data and 1 for errors) against a vmlet streaming URL. PortForward builds an
// API-server path with `?ports=N`; the handler here keeps that query and puts the streaming
// URL's path in front, as kubelet's proxy would. Sends REQUEST on the data channel and
// waits for the server to close. Prints one JSON line: protocol, output, errors, error.
// Usage: node portforward.mjs URL PORT REQUEST
import { PassThrough, Writable } from "node:stream";
import { KubeConfig, PortForward } from "@kubernetes/client-node";
import { WebSocketHandler } from "@kubernetes/client-node/dist/web-socket-handler.js";

const [url, port, request] = process.argv.slice(2);
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
const output = collect();
const errors = collect();
const out = { protocol: "", output: "", errors: "", error: "" };
const handler = new WebSocketHandler(kc);
const toStreamingUrl = {
  connect: (apiPath, text, binary) =>
    handler.connect(`${pathname}${apiPath.slice(apiPath.indexOf("?"))}`, text, binary),
};
// Not ended: on v4 client-node closes the WebSocket when its input ends.
const input = new PassThrough();
try {
  const ws = await new PortForward(kc, false, toStreamingUrl).portForward(
    "default",
    "pod",
    [Number(port)],
    output,
    errors,
    input,
  );
  out.protocol = ws.protocol;
  input.write(request);
  await new Promise((resolve) => {
    if (ws.readyState === 3) resolve();
    ws.addEventListener("close", resolve);
  });
} catch (e) {
  out.error = String(e?.message ?? e);
}
out.output = output.text();
out.errors = errors.text();
console.log(JSON.stringify(out));
