// Image names, rules and disk formats: what a pull accepts before it downloads a byte,
// and what it accepts after the first 4 KiB.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { detectDiskFormat } from "../../../src/runtime/images/format";
import {
  ImageRulesError,
  normalizeImageName,
  parseImageRules,
  resolveImage,
} from "../../../src/runtime/images/rules";
import { fakeQcow2 } from "../../harness/qcow2";

const DIGEST = "a".repeat(64);

describe("image names", () => {
  test("a name without a tag means :latest; a registry port is not a tag", () => {
    assert.equal(normalizeImageName("vmlet.io/cirros").tag, "vmlet.io/cirros:latest");
    assert.equal(normalizeImageName("vmlet.io/cirros:0.6").tag, "vmlet.io/cirros:0.6");
    assert.equal(normalizeImageName("host:5000/cirros").tag, "host:5000/cirros:latest");
    assert.equal(normalizeImageName("host:5000/cirros").repository, "host:5000/cirros");
  });

  test("a digest reference without a tag gets no tag, so pulling it cannot move :latest", () => {
    const pinned = normalizeImageName(`vmlet.io/cirros@sha256:${DIGEST}`);
    assert.equal(pinned.tag, undefined);
    assert.equal(pinned.repository, "vmlet.io/cirros");
    assert.equal(
      normalizeImageName(`vmlet.io/cirros:0.6@sha256:${DIGEST}`).tag,
      "vmlet.io/cirros:0.6",
    );
  });

  test("a digest reference carries its sha256; a malformed one is refused", () => {
    assert.equal(normalizeImageName(`vmlet.io/cirros@sha256:${DIGEST}`).sha256, DIGEST);
    assert.throws(
      () => normalizeImageName("vmlet.io/cirros@sha256:abc"),
      /digest must be sha256:<64 hex>/,
    );
  });
});

describe("image rules", () => {
  const rules = parseImageRules(
    JSON.stringify([
      { name: "vmlet.io/cirros", url: "http://h/cirros.qcow2", sha256: DIGEST },
      { prefix: "vmlet.io/", url: "http://h/images/" },
      { prefix: "vmlet.io/deep/", url: "http://d/" },
    ]),
    "rules.json",
  );

  test("an exact name wins, with its digest; cirros and cirros:latest are one image", () => {
    for (const name of ["vmlet.io/cirros", "vmlet.io/cirros:latest"]) {
      assert.deepEqual(resolveImage(rules, name), {
        tag: "vmlet.io/cirros:latest",
        repository: "vmlet.io/cirros",
        url: "http://h/cirros.qcow2",
        sha256: DIGEST,
      });
    }
  });

  test("a prefix appends the rest of the name, the longest prefix wins, :latest is left off", () => {
    assert.equal(resolveImage(rules, "vmlet.io/debian")?.url, "http://h/images/debian");
    assert.equal(resolveImage(rules, "vmlet.io/debian:latest")?.url, "http://h/images/debian");
    assert.equal(resolveImage(rules, "vmlet.io/debian:12")?.url, "http://h/images/debian:12");
    assert.equal(resolveImage(rules, "vmlet.io/deep/x")?.url, "http://d/x");
    assert.equal(resolveImage(rules, "docker.io/nginx"), undefined);
  });

  test("a prefix rule's remainder stays under the rule's URL: traversal, queries and fragments are refused", () => {
    for (const [name, why] of [
      ["vmlet.io/../../admin/export?x=1", /path segment "\.\.": no "\." or "\.\."/],
      ["vmlet.io/a/./b", /path segment "\.": no "\." or "\.\."/],
      ["vmlet.io/x..y", /path segment "x\.\.y"/],
      ["vmlet.io/export?x=1", /no \?, #, %, backslash or control characters/],
      ["vmlet.io/img#frag", /no \?, #, %, backslash or control characters/],
      ["vmlet.io/%2e%2e/admin", /no \?, #, %, backslash or control characters/],
      ["vmlet.io/a\\b", /no \?, #, %, backslash or control characters/],
      ["vmlet.io/a\u0000b", /no \?, #, %, backslash or control characters/],
      ["vmlet.io/a\nb", /no \?, #, %, backslash or control characters/],
      ["vmlet.io/a//b", /an empty path segment/],
      ["vmlet.io//a", /an empty path segment/],
    ] as const) {
      assert.throws(
        () => resolveImage(rules, name),
        (error: unknown) => {
          assert.ok(error instanceof ImageRulesError, String(error));
          assert.ok(error.message.startsWith(`image ${JSON.stringify(name)}: `), error.message);
          assert.match(error.message, why);
          return true;
        },
        name,
      );
    }
  });

  test("a prefix rule's remainder is percent-encoded segment by segment; a tag's colon stays", () => {
    assert.equal(resolveImage(rules, "vmlet.io/a b/c+d")?.url, "http://h/images/a%20b/c%2Bd");
    assert.equal(resolveImage(rules, "vmlet.io/team/é:v1")?.url, "http://h/images/team/%C3%A9:v1");
    assert.equal(resolveImage(rules, "vmlet.io/x&y=z")?.url, "http://h/images/x%26y%3Dz");
  });

  test("a digest reference is looked up by its repository's :latest rule, and gets no tag", () => {
    assert.deepEqual(resolveImage(rules, `vmlet.io/cirros@sha256:${DIGEST}`), {
      tag: undefined,
      repository: "vmlet.io/cirros",
      url: "http://h/cirros.qcow2",
      sha256: DIGEST,
    });
    const viaPrefix = resolveImage(rules, `vmlet.io/debian@sha256:${DIGEST}`);
    assert.equal(viaPrefix?.url, "http://h/images/debian");
    assert.equal(viaPrefix?.tag, undefined);
  });

  test("a digest that contradicts the rule is refused", () => {
    assert.throws(
      () => resolveImage(rules, `vmlet.io/cirros@sha256:${"b".repeat(64)}`),
      /differs from the rule/,
    );
  });

  test("bad rules files say which entry and what is wrong", () => {
    assert.throws(() => parseImageRules("{", "r.json"), /image rules r\.json: not JSON/);
    assert.throws(() => parseImageRules("{}", "r.json"), /not a list/);
    assert.throws(
      () => parseImageRules('[{"name":"a"}]', "r.json"),
      /entry 0: url must be an http\(s\) URL/,
    );
    assert.throws(
      () => parseImageRules('[{"url":"http://x"}]', "r.json"),
      /entry 0: needs exactly one of name, prefix/,
    );
    assert.throws(
      () => parseImageRules('[{"name":"a","url":"http://x","sha256":"xyz"}]', "r.json"),
      /entry 0: sha256 must be 64 lowercase hex digits/,
    );
    assert.throws(
      () => parseImageRules(`[{"name":"a@sha256:${DIGEST}","url":"http://x"}]`, "r.json"),
      /entry 0: name must not carry a digest; give it as sha256/,
    );
  });
});

describe("disk formats", () => {
  const sized = (n: number, fill: (b: Buffer) => void) => {
    const b = Buffer.alloc(n);
    fill(b);
    return b;
  };

  test("qcow2 by its magic; raw by an MBR signature or a GPT header", () => {
    assert.equal(detectDiskFormat(sized(4096, (b) => b.write("QFI\xfb", "latin1"))), "qcow2");
    assert.equal(detectDiskFormat(sized(4096, (b) => b.writeUInt16BE(0x55aa, 510))), "raw");
    assert.equal(detectDiskFormat(sized(4096, (b) => b.write("EFI PART", 512, "latin1"))), "raw");
  });

  /** A qcow2 header of `version` with a backing file offset and incompatible features. */
  const qcow2Header = (version: number, backingOffset: bigint, incompatibleFeatures = 0n) =>
    fakeQcow2({ version, backingOffset, incompatibleFeatures });

  test("a qcow2 that names a backing file is refused, with the file's name when it is in the header", () => {
    const named = fakeQcow2({ backingFile: "/etc/shadow" });
    assert.throws(
      () => detectDiskFormat(named),
      /qcow2 refused: its header names a backing file "\/etc\/shadow"; QEMU would open that host file for the guest/,
    );
    assert.throws(
      () => detectDiskFormat(qcow2Header(2, 1n << 40n)),
      /qcow2 refused: its header names a backing file;/,
    );
  });

  test("a version 3 qcow2 with an external data file is refused; other feature bits are QEMU's to judge", () => {
    assert.throws(
      () => detectDiskFormat(qcow2Header(3, 0n, 0b100n)),
      /qcow2 refused: its header says its data is in an external data file/,
    );
    assert.equal(detectDiskFormat(qcow2Header(3, 0n, 0b011n)), "qcow2");
    // Version 2 headers end at 72: what follows is not a feature field.
    assert.equal(detectDiskFormat(qcow2Header(2, 0n, 0b100n)), "qcow2");
  });

  test("error pages, archives, compressed files and blanks are refused, saying what they look like", () => {
    const cases: [Buffer, RegExp][] = [
      [
        Buffer.from("<!DOCTYPE html><html><body>404</body></html>"),
        /looks like an HTML or text page/,
      ],
      [sized(4096, (b) => b.write("<html>", "latin1")), /looks like an HTML or text page/],
      [sized(4096, (b) => b.writeUInt16BE(0x1f8b, 0)), /looks like gzip data/],
      [sized(4096, (b) => b.write("ustar", 257, "latin1")), /looks like a tar archive/],
      [sized(4096, (b) => b.write("KDMV", "latin1")), /looks like a VMDK image/],
      [sized(4096, () => {}), /no qcow2 magic and no MBR\/GPT partition table/],
      [Buffer.alloc(10), /only 10 bytes/],
    ];
    for (const [header, message] of cases) {
      assert.throws(() => detectDiskFormat(header), message);
      assert.throws(
        () => detectDiskFormat(header),
        /vmlet takes qcow2, or raw disks with a partition table/,
      );
    }
  });
});
