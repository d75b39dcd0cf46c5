// The image store's pulls against a loopback HTTP server: which names a pull gives the
// image.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { imageMessage } from "../../src/runtime/convert";
import { ImageStore } from "../../src/runtime/images/image-store";
import type { ImageRule } from "../../src/runtime/images/rules";
import { RecordStore } from "../../src/runtime/store/record-store";
import type { ImageRecord } from "../../src/runtime/store/records";

/** A self-contained version 3 qcow2 header, then bytes that differ by seed. */
function qcow2(seed: string): Buffer {
  const out = Buffer.alloc(64 * 1024, crypto.createHash("sha256").update(seed).digest());
  out.fill(0, 0, 104);
  out.write("QFI\xfb", 0, "latin1");
  out.writeUInt32BE(3, 4);
  return out;
}

const sha = (b: Buffer) => crypto.createHash("sha256").update(b).digest("hex");

describe("image store pulls", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmlet-images-"));
  const bodies = new Map<string, Buffer>();
  const rules: ImageRule[] = [];
  let server: http.Server;
  let base: string;
  let store: ImageStore;

  before(async () => {
    server = http.createServer((req, res) => {
      const body = bodies.get(req.url ?? "");
      res.statusCode = body ? 200 : 404;
      res.end(body ?? "not found");
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    store = await ImageStore.open({
      records: await RecordStore.open<ImageRecord>("image", path.join(dir, "images")),
      dir,
      rules: () => rules,
      logger: pino({ level: "silent" }),
    });
  });

  after(() => {
    server?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** No temp file, and a blob for each record and nothing else. */
  function assertNothingLeft(): void {
    assert.deepEqual(fs.readdirSync(path.join(dir, "tmp")), []);
    assert.deepEqual(
      fs.readdirSync(path.join(dir, "blobs")).sort(),
      store
        .list()
        .map((r) => r.id)
        .sort(),
    );
  }

  test("pulling by digest keeps :latest where it was and shows the digest as a repo digest", async () => {
    const v1 = qcow2("cirros 1");
    const v2 = qcow2("cirros 2");
    rules.push({ name: "vmlet.io/cirros:latest", url: `${base}/cirros.qcow2` });
    bodies.set("/cirros.qcow2", v1);
    const latest = await store.pull("vmlet.io/cirros");
    bodies.set("/cirros.qcow2", v2); // the server moved on; the user pins the new bytes
    const pinned = await store.pull(`vmlet.io/cirros@sha256:${sha(v2)}`);

    assert.equal(pinned.id, sha(v2));
    assert.deepEqual(pinned.repoTags, []);
    assert.equal(store.find("vmlet.io/cirros")?.id, latest.id, "repo means repo:latest");
    assert.equal(store.find("vmlet.io/cirros:latest")?.id, latest.id);
    assert.deepEqual(store.find(`sha256:${latest.id}`)?.repoTags, ["vmlet.io/cirros:latest"]);
    assert.equal(store.find(`vmlet.io/cirros@sha256:${sha(v2)}`)?.id, pinned.id);
    assert.equal(store.find(`vmlet.io/cirros@sha256:${sha(v1)}`)?.id, latest.id);
    const shown = imageMessage(store.find(`vmlet.io/cirros@sha256:${sha(v2)}`) as ImageRecord);
    assert.deepEqual(shown.repoTags, []);
    assert.deepEqual(shown.repoDigests, [`vmlet.io/cirros@sha256:${sha(v2)}`]);
    assert.deepEqual(imageMessage(latest).repoDigests, [`vmlet.io/cirros@sha256:${sha(v1)}`]);
  });

  test("pulling a present image by digest adds its repo digest and moves no tag", async () => {
    const v1 = qcow2("cirros 1");
    rules.push({ name: "vmlet.io/mirror:latest", url: `${base}/mirror.qcow2` });
    bodies.set("/mirror.qcow2", v1);
    const record = await store.pull(`vmlet.io/mirror@sha256:${sha(v1)}`);
    assert.deepEqual(record.repoTags, ["vmlet.io/cirros:latest"]);
    assert.deepEqual((imageMessage(record).repoDigests ?? []).sort(), [
      `vmlet.io/cirros@sha256:${sha(v1)}`,
      `vmlet.io/mirror@sha256:${sha(v1)}`,
    ]);
    assert.equal(store.find("vmlet.io/mirror"), undefined, "no vmlet.io/mirror:latest tag");
    assertNothingLeft();
  });
});
