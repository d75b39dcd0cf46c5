// The image store's pulls against a loopback HTTP server: which names a pull gives the
// image, and which downloads it refuses without keeping a file.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import zlib from "node:zlib";
import pino from "pino";
import { imageMessage } from "../../../src/runtime/convert";
import { CriError } from "../../../src/runtime/errors";
import { ImageStore } from "../../../src/runtime/images/image-store";
import type { ImageRule } from "../../../src/runtime/images/rules";
import { RecordStore } from "../../../src/runtime/store/record-store";
import type { ImageRecord } from "../../../src/runtime/store/records";
import { fakeQcow2 } from "../../harness/qcow2";

/** A self-contained version 3 qcow2, 64 KiB, its bytes after the header by seed. */
const qcow2 = (seed: string) => fakeQcow2({ seed, size: 64 * 1024 });

const sha = (b: Buffer) => crypto.createHash("sha256").update(b).digest("hex");

describe("image store pulls", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmlet-images-"));
  const bodies = new Map<string, Buffer>();
  /** Paths answered by their own handler rather than a body. */
  const handlers = new Map<string, http.RequestListener>();
  /** Every request the server got: path and Accept-Encoding. */
  const requests: { url: string; acceptEncoding: string | undefined }[] = [];
  const rules: ImageRule[] = [];
  let server: http.Server;
  let base: string;
  let store: ImageStore;

  before(async () => {
    server = http.createServer((req, res) => {
      requests.push({ url: req.url ?? "", acceptEncoding: req.headers["accept-encoding"] });
      const handler = handlers.get(req.url ?? "");
      if (handler) return handler(req, res);
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

  describe("a qcow2 that would open host files is refused like a non-disk, leaving nothing", () => {
    const work = fs.mkdtempSync(path.join(os.tmpdir(), "vmlet-qcow2-"));
    const qemuImg = (...args: string[]) => execFileSync("qemu-img", args, { stdio: "pipe" });
    after(() => fs.rmSync(work, { recursive: true, force: true }));

    const cases: { name: string; make: () => Buffer; message: RegExp }[] = [
      {
        name: "vmlet.io/backed",
        make: () => {
          qemuImg(
            "create",
            "-f",
            "qcow2",
            "-b",
            "/etc/shadow",
            "-F",
            "raw",
            "-u",
            `${work}/b`,
            "1M",
          );
          return fs.readFileSync(`${work}/b`);
        },
        message:
          /^PullImage vmlet\.io\/backed: GET http:\/\/127\.0\.0\.1:\d+\/vmlet\.io\/backed: qcow2 refused: its header names a backing file "\/etc\/shadow"; QEMU would open that host file .*; nothing kept$/,
      },
      {
        name: "vmlet.io/datafile",
        make: () => {
          qemuImg("create", "-f", "qcow2", "-o", `data_file=${work}/data.raw`, `${work}/d`, "1M");
          return fs.readFileSync(`${work}/d`);
        },
        message:
          /^PullImage vmlet\.io\/datafile: GET .*: qcow2 refused: its header says its data is in an external data file; .*nothing kept$/,
      },
      {
        name: "vmlet.io/tiny-backed",
        // Shorter than the 4 KiB read before a download is checked: checked at its end.
        make: () => fakeQcow2({ size: 1024, version: 2, backingFile: "/dev/sda" }),
        message: /qcow2 refused: its header names a backing file "\/dev\/sda"/,
      },
    ];
    for (const c of cases) {
      test(c.name, async () => {
        rules.push({ name: `${c.name}:latest`, url: `${base}/${c.name}` });
        bodies.set(`/${c.name}`, c.make());
        const before = store.list().length;
        await assert.rejects(store.pull(c.name), (error: unknown) => {
          assert.ok(error instanceof CriError, String(error));
          assert.equal(error.code, "INVALID_ARGUMENT");
          assert.match(error.message, c.message);
          return true;
        });
        assert.equal(store.list().length, before);
        assert.equal(store.find(c.name), undefined);
        assertNothingLeft();
      });
    }

    test("a self-contained qcow2 made by qemu-img is taken", async () => {
      qemuImg("create", "-f", "qcow2", `${work}/ok`, "1M");
      rules.push({ name: "vmlet.io/plain:latest", url: `${base}/plain` });
      bodies.set("/plain", fs.readFileSync(`${work}/ok`));
      assert.equal((await store.pull("vmlet.io/plain")).format, "qcow2");
      assertNothingLeft();
    });
  });
  test("a prefix rule never sends a traversal, query or fragment: INVALID_ARGUMENT naming the image, no request", async () => {
    rules.push({ prefix: "vmlet.io/", url: `${base}/images/` });
    bodies.set("/admin/export?x=1", qcow2("admin"));
    const seen = requests.length;
    for (const name of [
      "vmlet.io/../../admin/export?x=1",
      "vmlet.io/a%2F..%2Fb",
      "vmlet.io/a//b",
    ]) {
      await assert.rejects(store.pull(name), (error: unknown) => {
        assert.ok(error instanceof CriError, String(error));
        assert.equal(error.code, "INVALID_ARGUMENT");
        assert.ok(error.message.startsWith(`PullImage ${name}: image "${name}": `), error.message);
        return true;
      });
    }
    assert.deepEqual(requests.slice(seen), [], "no request reached the server");
    assertNothingLeft();
  });

  describe("downloads are bounded: a cap, and no content-encoding", () => {
    const LIMIT = 256 * 1024;
    let capped: ImageStore;
    const capDir = path.join(dir, "capped");
    before(async () => {
      capped = await ImageStore.open({
        records: await RecordStore.open<ImageRecord>("image", path.join(capDir, "images")),
        dir: capDir,
        rules: () => rules,
        logger: pino({ level: "silent" }),
        maxBytes: LIMIT,
      });
    });

    function cappedNothingLeft(): void {
      assert.deepEqual(fs.readdirSync(path.join(capDir, "tmp")), []);
      assert.deepEqual(fs.readdirSync(path.join(capDir, "blobs")), []);
      assert.deepEqual(capped.list(), []);
    }

    async function refused(name: string, message: RegExp): Promise<void> {
      await assert.rejects(capped.pull(name), (error: unknown) => {
        assert.ok(error instanceof CriError, String(error));
        assert.equal(error.code, "INVALID_ARGUMENT");
        assert.match(error.message, message);
        return true;
      });
      cappedNothingLeft();
    }

    test("an image over the cap is refused by its Content-Length, and nothing is kept", async () => {
      rules.push({ name: "vmlet.io/big-declared:latest", url: `${base}/big-declared` });
      bodies.set("/big-declared", fakeQcow2({ seed: "big", size: LIMIT + 4096 }));
      await refused(
        "vmlet.io/big-declared",
        /: 266240 bytes \(Content-Length\) is more than the 262144-byte image limit; nothing kept$/,
      );
    });

    test("an image over the cap without a Content-Length is stopped at the cap, and nothing is kept", async () => {
      rules.push({ name: "vmlet.io/big-chunked:latest", url: `${base}/big-chunked` });
      const body = fakeQcow2({ seed: "chunked", size: 4 * LIMIT });
      handlers.set("/big-chunked", (_req, res) => {
        res.writeHead(200, { "transfer-encoding": "chunked" });
        res.end(body);
      });
      await refused(
        "vmlet.io/big-chunked",
        /: more than the 262144-byte image limit; download stopped; nothing kept$/,
      );
    });

    test("a gzip-encoded image is refused, not inflated to disk; vmlet asks for identity", async () => {
      rules.push({ name: "vmlet.io/gzipped:latest", url: `${base}/gzipped` });
      const gz = zlib.gzipSync(qcow2("gzipped"));
      handlers.set("/gzipped", (_req, res) => {
        res.writeHead(200, { "content-encoding": "gzip", "content-length": gz.length });
        res.end(gz);
      });
      await refused(
        "vmlet.io/gzipped",
        /: Content-Encoding "gzip": vmlet takes disk images unencoded; nothing kept$/,
      );
      assert.equal(requests.at(-1)?.url, "/gzipped");
      assert.equal(requests.at(-1)?.acceptEncoding, "identity");
    });

    test("an image under the cap is taken", async () => {
      rules.push({ name: "vmlet.io/small:latest", url: `${base}/small` });
      bodies.set("/small", fakeQcow2({ seed: "small", size: LIMIT }));
      assert.equal((await capped.pull("vmlet.io/small")).size, LIMIT);
    });
  });

  test("a server that stops sending, before its headers or mid-image, is given up on after the stall timeout, leaving nothing", {
    timeout: 15_000,
  }, async () => {
    const stallDir = path.join(dir, "stall");
    const stalling = await ImageStore.open({
      records: await RecordStore.open<ImageRecord>("image", path.join(stallDir, "images")),
      dir: stallDir,
      rules: () => rules,
      logger: pino({ level: "silent" }),
      stallTimeoutMs: 300,
    });
    const hung: http.ServerResponse[] = [];
    handlers.set("/no-headers", (_req, res) => void hung.push(res));
    handlers.set("/mid-body", (_req, res) => {
      res.writeHead(200, { "content-length": 1024 * 1024 });
      res.write(qcow2("stalls"));
      hung.push(res);
    });
    rules.push({ name: "vmlet.io/no-headers:latest", url: `${base}/no-headers` });
    rules.push({ name: "vmlet.io/mid-body:latest", url: `${base}/mid-body` });
    try {
      for (const [name, message] of [
        ["vmlet.io/no-headers", /GET .*\/no-headers: no data for 300 ms: given up; nothing kept$/],
        [
          "vmlet.io/mid-body",
          /GET .*\/mid-body: download failed after 65536 bytes: no data for 300 ms: given up; nothing kept$/,
        ],
      ] as const) {
        const at = Date.now();
        await assert.rejects(stalling.pull(name), (error: unknown) => {
          assert.ok(error instanceof CriError, String(error));
          assert.equal(error.code, "UNAVAILABLE");
          assert.match(error.message, message);
          return true;
        });
        assert.ok(Date.now() - at < 3000, `${name}: given up after ${Date.now() - at} ms`);
        assert.deepEqual(fs.readdirSync(path.join(stallDir, "tmp")), []);
        assert.deepEqual(fs.readdirSync(path.join(stallDir, "blobs")), []);
      }
    } finally {
      for (const res of hung) res.destroy();
    }
  });

  test("a pull logs its progress as JSON lines carrying the image, ending at 100 percent", async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino(
      { level: "info" },
      { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
    );
    const logged = await ImageStore.open({
      records: await RecordStore.open<ImageRecord>("image", path.join(dir, "logged-images")),
      dir: path.join(dir, "logged"),
      rules: () => rules,
      logger,
      progressIntervalMs: 0,
    });
    const body = qcow2("progress");
    rules.push({ name: "vmlet.io/progress:latest", url: `${base}/progress.qcow2` });
    bodies.set("/progress.qcow2", body);
    await logged.pull("vmlet.io/progress");
    const progress = lines.filter((l) => l.msg === "pull progress");
    assert.ok(progress.length > 0, JSON.stringify(lines));
    for (const l of progress) assert.equal(l.image, "vmlet.io/progress:latest");
    const last = progress.at(-1)!;
    assert.equal(last.bytes, body.length);
    assert.equal(last.total, body.length);
    assert.equal(last.percent, 100);
  });
});
