import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, it } from "node:test";
import { StreamingServer } from "../../../src/runtime/streaming/server";

function request(
  url: string,
  method: string,
  headers: Record<string, string | string[]>,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers });
    req.on("response", (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    // An upgrade answered with 101 would land here; these tests expect refusals.
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: "" });
    });
    req.on("error", reject);
    req.end();
  });
}

const UPGRADE = { Connection: "Upgrade", Upgrade: "SPDY/3.1" };

describe("streaming server checks, in kubelet's order", () => {
  const served: string[] = [];
  const server = new StreamingServer<string>({
    serve: (u) => {
      served.push(`${u.kind}:${u.request}:${u.protocol}`);
      u.session.close();
    },
  });
  before(() => server.start());
  after(() => server.stop());

  it("listens on 127.0.0.1 on a port chosen at start and returns absolute URLs", () => {
    assert.match(server.baseUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.match(server.urlFor("portforward", "p"), /\/portforward\/[A-Za-z0-9_-]{8}$/);
  });

  it("answers other paths 404 and other methods 405", async () => {
    assert.equal((await request(`${server.baseUrl}/logs/AAAAAAAA`, "GET", UPGRADE)).status, 404);
    const url = server.urlFor("exec", "e");
    assert.equal((await request(url, "PUT", UPGRADE)).status, 405);
  });

  it("refuses a token on the wrong verb's path with 400", async () => {
    const url = server.urlFor("exec", "e").replace("/exec/", "/attach/");
    const r = await request(url, "POST", {
      ...UPGRADE,
      "X-Stream-Protocol-Version": "v4.channel.k8s.io",
    });
    assert.equal(r.status, 400);
    assert.match(r.body, /token is for exec, not attach/);
  });

  it("wants X-Stream-Protocol-Version (400) and takes comma-separated lists", async () => {
    assert.equal((await request(server.urlFor("exec", "e"), "POST", UPGRADE)).status, 400);
    const r = await request(server.urlFor("portforward", "pf"), "GET", {
      ...UPGRADE,
      "X-Stream-Protocol-Version": "bogus, portforward.k8s.io",
    });
    assert.equal(r.status, 101);
    assert.equal(r.headers["x-stream-protocol-version"], "portforward.k8s.io");
    assert.ok(served.includes("portforward:pf:portforward.k8s.io"));
  });

  it("answers a request without upgrade headers 400 (after spending the token, as kubelet does)", async () => {
    const url = server.urlFor("exec", "e");
    const r = await request(url, "POST", { "X-Stream-Protocol-Version": "v4.channel.k8s.io" });
    assert.equal(r.status, 400);
    assert.match(r.body, /missing upgrade headers/);
    assert.equal((await request(url, "POST", UPGRADE)).status, 404);
  });

  it("refuses an exec protocol on port-forward with 403 naming portforward.k8s.io", async () => {
    const r = await request(server.urlFor("portforward", "pf"), "GET", {
      ...UPGRADE,
      "X-Stream-Protocol-Version": "v4.channel.k8s.io",
    });
    assert.equal(r.status, 403);
    assert.equal(r.headers["x-accepted-stream-protocol-versions"], "portforward.k8s.io");
  });
});
