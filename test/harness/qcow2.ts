// Fake qcow2 images for the image tests: a header laid out as QEMU's
// docs/interop/qcow2.txt gives it (big-endian), then bytes that differ by seed, so that
// images differ by digest. Tests about what QEMU itself makes use `qemu-img` instead.
import crypto from "node:crypto";

export interface FakeQcow2 {
  /** Total length in bytes; 4 KiB by default. */
  size?: number;
  /** Header version; 3 by default. */
  version?: number;
  /** Written at offset 512 and named by the header as its backing file. */
  backingFile?: string;
  /** A backing file offset with nothing written there (e.g. past the file's end). */
  backingOffset?: bigint;
  /** The version 3 incompatible-features field. */
  incompatibleFeatures?: bigint;
  /** What fills the bytes after the header. */
  seed?: string;
}

const HEADER_END = 104; // a version 3 header's length

export function fakeQcow2(options: FakeQcow2 = {}): Buffer {
  const out = Buffer.alloc(options.size ?? 4096);
  if (options.seed !== undefined) {
    const pattern = crypto.createHash("sha512").update(options.seed).digest();
    for (let i = HEADER_END; i < out.length; i += pattern.length) pattern.copy(out, i);
  }
  out.write("QFI\xfb", 0, "latin1");
  out.writeUInt32BE(options.version ?? 3, 4);
  if (options.backingFile !== undefined) {
    out.writeBigUInt64BE(512n, 8);
    out.writeUInt32BE(Buffer.byteLength(options.backingFile), 16);
    out.write(options.backingFile, 512, "latin1");
  } else if (options.backingOffset !== undefined) {
    out.writeBigUInt64BE(options.backingOffset, 8);
  }
  if (options.incompatibleFeatures !== undefined) {
    out.writeBigUInt64BE(options.incompatibleFeatures, 72);
  }
  return out;
}
