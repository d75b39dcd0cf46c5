// PullImage and friends against a local HTTP server on 127.0.0.1 in the private netns:
// disks are stored by digest; error pages, bad digests and cut downloads leave nothing.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { status } from "@grpc/grpc-js";
import { rejectsWith } from "../harness/cri-suite";
import { requirePrivateNamespace } from "../harness/fixtures";
import { fakeQcow2 } from "../harness/qcow2";
import { podConfig, startTestVmlet, type TestVmlet } from "../harness/test-vmlet";

/** A self-contained version 3 qcow2, 1 MiB, its bytes after the header by seed. */
const qcow2 = (seed: string) => fakeQcow2({ seed, size: 1024 * 1024 });

function rawDisk(): Buffer {
  const b = Buffer.alloc(64 * 1024);
  b.writeUInt16BE(0x55aa, 510);
  return b;
}

const sha = (b: Buffer) => crypto.createHash("sha256").update(b).digest("hex");

describe("CRI image service", () => {
  let t: TestVmlet;
  let server: http.Server;
  let base: string;
  const hits = new Map<string, number>();
  const bodies: Record<string, Buffer> = {
    "/cirros.qcow2": qcow2("cirros"),
    "/cirros-v2.qcow2": qcow2("cirros v2"),
    "/disk.raw": rawDisk(),
    "/images/debian": qcow2("debian"),
  };

  before(async () => {
    requirePrivateNamespace();
    server = http.createServer((req, res) => {
      const url = req.url ?? "";
      hits.set(url, (hits.get(url) ?? 0) + 1);
      const body = bodies[url];
      if (body) {
        res.setHeader("content-length", body.length);
        res.end(body);
      } else if (url === "/error.html") {
        res.setHeader("content-type", "text/html");
        res.end("<!DOCTYPE html><html><body>Service Unavailable</body></html>");
      } else if (url === "/archive.tar.gz") {
        const gz = Buffer.alloc(8192);
        gz.writeUInt16BE(0x1f8b, 0);
        res.end(gz);
      } else if (url === "/half") {
        // Promises 1 MiB, sends 300 KiB of a valid qcow2, then drops the connection.
        res.setHeader("content-length", 1024 * 1024);
        res.write(qcow2("half").subarray(0, 300 * 1024), () => res.destroy());
      } else if (url === "/half-chunked") {
        res.write(qcow2("half").subarray(0, 300 * 1024), () => res.destroy());
      } else {
        res.statusCode = 404;
        res.end("not found");
      }
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const closedPort = (closed.address() as { port: number }).port;
    await new Promise((resolve) => closed.close(resolve));
    t = await startTestVmlet({
      rules: [
        {
          name: "vmlet.io/cirros:latest",
          url: `${base}/cirros.qcow2`,
          sha256: sha(bodies["/cirros.qcow2"]),
        },
        { name: "vmlet.io/moving:latest", url: `${base}/cirros.qcow2` },
        { name: "vmlet.io/raw:latest", url: `${base}/disk.raw` },
        {
          name: "vmlet.io/wrongsum:latest",
          url: `${base}/cirros-v2.qcow2`,
          sha256: "0".repeat(64),
        },
        { name: "vmlet.io/html:latest", url: `${base}/error.html` },
        { name: "vmlet.io/tgz:latest", url: `${base}/archive.tar.gz` },
        { name: "vmlet.io/half:latest", url: `${base}/half` },
        { name: "vmlet.io/half-chunked:latest", url: `${base}/half-chunked` },
        { name: "vmlet.io/gone:latest", url: `${base}/gone.qcow2` },
        { name: "vmlet.io/refused:latest", url: `http://127.0.0.1:${closedPort}/x.qcow2` },
        { prefix: "vmlet.io/pfx/", url: `${base}/images/` },
      ],
    });
  });

  after(async () => {
    await t?.close();
    server?.close();
  });

  /** Nothing half-made: no temp file, no blob without a record, no record without a blob. */
  function assertNothingLeft(expectedImages: number): void {
    assert.deepEqual(fs.readdirSync(path.join(t.stateDir, "tmp")), []);
    assert.equal(fs.readdirSync(path.join(t.stateDir, "blobs")).length, expectedImages);
    assert.equal(fs.readdirSync(path.join(t.stateDir, "images")).length, expectedImages);
  }

  test("a qcow2 is pulled, stored by digest, and found by tag, id and digest", async () => {
    const img = t.client.image;
    const digest = sha(bodies["/cirros.qcow2"]);
    assert.equal((await img.ImageStatus({ image: { image: "vmlet.io/cirros" } })).image, null);
    const { imageRef } = await img.PullImage({ image: { image: "vmlet.io/cirros" } });
    assert.equal(imageRef, `sha256:${digest}`);
    assert.ok(fs.existsSync(path.join(t.stateDir, "blobs", digest)));
    for (const ref of [
      "vmlet.io/cirros",
      "vmlet.io/cirros:latest",
      imageRef,
      `vmlet.io/cirros@sha256:${digest}`,
      digest.slice(0, 12),
    ]) {
      const { image } = await img.ImageStatus({ image: { image: ref } });
      assert.equal(image?.id, imageRef, ref);
      assert.deepEqual(image?.repoTags, ["vmlet.io/cirros:latest"]);
      assert.deepEqual(image?.repoDigests, [`vmlet.io/cirros@sha256:${digest}`]);
      assert.equal(Number(image?.size), bodies["/cirros.qcow2"].length);
    }
    const listed = await img.ListImages({});
    assert.deepEqual(
      listed.images.map((i) => i.id),
      [imageRef],
    );
    const filtered = await img.ListImages({ filter: { image: { image: "vmlet.io/other" } } });
    assert.equal(filtered.images.length, 0);
    assertNothingLeft(1);
  });

  test("an image whose rule has a digest and is present is not downloaded again", async () => {
    const before = hits.get("/cirros.qcow2") ?? 0;
    await t.client.image.PullImage({ image: { image: "vmlet.io/cirros:latest" } });
    assert.equal(hits.get("/cirros.qcow2") ?? 0, before);
  });

  test("concurrent pulls of one name download it once", async () => {
    const before = hits.get("/cirros-v2.qcow2") ?? 0;
    t.rules.push({ name: "vmlet.io/concurrent:latest", url: `${base}/cirros-v2.qcow2` });
    const refs = await Promise.all(
      Array.from({ length: 4 }, () =>
        t.client.image.PullImage({ image: { image: "vmlet.io/concurrent" } }),
      ),
    );
    assert.equal(new Set(refs.map((r) => r.imageRef)).size, 1);
    assert.equal((hits.get("/cirros-v2.qcow2") ?? 0) - before, 1);
    await t.client.image.RemoveImage({ image: { image: "vmlet.io/concurrent" } });
    t.rules.pop();
  });

  test("a second name for the same bytes is one image with two tags", async () => {
    const { imageRef } = await t.client.image.PullImage({ image: { image: "vmlet.io/moving" } });
    const { image } = await t.client.image.ImageStatus({ image: { image: imageRef } });
    assert.deepEqual(image?.repoTags.sort(), ["vmlet.io/cirros:latest", "vmlet.io/moving:latest"]);
    assertNothingLeft(1);
  });

  test("a raw disk with a partition table is accepted; a prefix rule maps the name to a URL", async () => {
    const raw = await t.client.image.PullImage({ image: { image: "vmlet.io/raw" } });
    assert.equal(raw.imageRef, `sha256:${sha(bodies["/disk.raw"])}`);
    const pfx = await t.client.image.PullImage({ image: { image: "vmlet.io/pfx/debian" } });
    assert.equal(pfx.imageRef, `sha256:${sha(bodies["/images/debian"])}`);
    assertNothingLeft(3);
  });

  test("what is not a disk is refused with what it looks like, and nothing is kept", async () => {
    await rejectsWith(
      t.client.image.PullImage({ image: { image: "vmlet.io/html" } }),
      status.INVALID_ARGUMENT,
      /PullImage vmlet\.io\/html: GET http:\/\/127\.0\.0\.1:\d+\/error\.html: not a disk image: looks like an HTML or text page.*nothing kept/,
    );
    await rejectsWith(
      t.client.image.PullImage({ image: { image: "vmlet.io/tgz" } }),
      status.INVALID_ARGUMENT,
      /not a disk image: looks like gzip data/,
    );
    assertNothingLeft(3);
  });

  test("a digest mismatch is refused and nothing is kept", async () => {
    await rejectsWith(
      t.client.image.PullImage({ image: { image: "vmlet.io/wrongsum" } }),
      status.INVALID_ARGUMENT,
      /has sha256:[0-9a-f]{64}, expected sha256:0{64}; nothing kept/,
    );
    assertNothingLeft(3);
  });

  test("a pull that fails halfway is an error and leaves nothing", async () => {
    await rejectsWith(
      t.client.image.PullImage({ image: { image: "vmlet.io/half" } }),
      status.UNAVAILABLE,
      /PullImage vmlet\.io\/half: GET .*\/half: download failed after \d+ bytes.*nothing kept/,
    );
    await rejectsWith(
      t.client.image.PullImage({ image: { image: "vmlet.io/half-chunked" } }),
      status.UNAVAILABLE,
      /download failed after \d+ bytes/,
    );
    assertNothingLeft(3);
    assert.equal(
      (await t.client.image.ImageStatus({ image: { image: "vmlet.io/half" } })).image,
      null,
    );
  });

  test("unknown names, missing URLs and unreachable servers get NOT_FOUND or UNAVAILABLE", async () => {
    await rejectsWith(
      t.client.image.PullImage({ image: { image: "docker.io/library/nginx" } }),
      status.NOT_FOUND,
      /no image rule matches docker\.io\/library\/nginx:latest/,
    );
    await rejectsWith(
      t.client.image.PullImage({ image: { image: "vmlet.io/gone" } }),
      status.NOT_FOUND,
      /HTTP 404/,
    );
    await rejectsWith(
      t.client.image.PullImage({ image: { image: "vmlet.io/refused" } }),
      status.UNAVAILABLE,
      /ECONNREFUSED/,
    );
    await rejectsWith(
      t.client.image.PullImage({ image: { image: "" } }),
      status.INVALID_ARGUMENT,
      /image\.image is required/,
    );
    assertNothingLeft(3);
  });

  test("RemoveImage is refused while a container uses the image, then removes it idempotently", async () => {
    const { podSandboxId } = await t.client.runtime.RunPodSandbox({ config: podConfig("user") });
    const { containerId } = await t.client.runtime.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "c" }, image: { image: "vmlet.io/raw" } },
    });
    await rejectsWith(
      t.client.image.RemoveImage({ image: { image: "vmlet.io/raw" } }),
      status.FAILED_PRECONDITION,
      new RegExp(`is used by container ${containerId}`),
    );
    await t.client.runtime.RemovePodSandbox({ podSandboxId });
    await t.client.image.RemoveImage({ image: { image: "vmlet.io/raw" } });
    await t.client.image.RemoveImage({ image: { image: "vmlet.io/raw" } });
    assert.equal(
      (await t.client.image.ImageStatus({ image: { image: "vmlet.io/raw" } })).image,
      null,
    );
    assertNothingLeft(2);
  });

  test("images survive a restart; a leftover temp file and an orphan blob are cleaned", async () => {
    fs.writeFileSync(path.join(t.stateDir, "tmp", "dead.part"), "partial");
    fs.writeFileSync(path.join(t.stateDir, "blobs", "f".repeat(64)), "orphan");
    await t.restart();
    assertNothingLeft(2);
    const { image } = await t.client.image.ImageStatus({ image: { image: "vmlet.io/cirros" } });
    assert.ok(image);
    const fsInfo = await t.client.image.ImageFsInfo({});
    assert.equal(fsInfo.imageFilesystems[0].inodesUsed?.value, "2");
  });
});
