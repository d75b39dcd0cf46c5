// Which disk images vmlet accepts, decided by their first bytes, so that an HTML error
// page, a tarball or a compressed file is refused at pull time rather than failing
// to boot. Accepted:
//   qcow2: the magic "QFI\xfb" at offset 0, and self-contained: a backing file or an
//          external data file is a path on the host that qemu-img and QEMU would open
//          for the guest, so a header naming either is refused;
//   raw:   a disk with a partition table: the MBR boot signature 0x55 0xAA at 510 (every
//          MBR disk, and every GPT disk through its protective MBR), or a GPT header
//          ("EFI PART") at 512. A raw filesystem image without a partition table is refused.
import type { DiskFormat } from "../store/records";

/** How many bytes `detectDiskFormat` needs to decide. */
export const HEADER_BYTES = 4096;

const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]); // "QFI\xfb", qemu docs/interop/qcow2.txt
const MBR_SIGNATURE_OFFSET = 510;
const GPT_SIGNATURE = Buffer.from("EFI PART", "latin1");
const GPT_HEADER_OFFSET = 512;

// qcow2 header fields, qemu docs/interop/qcow2.txt (all big-endian)
const QCOW2_VERSION_OFFSET = 4; // u32
const QCOW2_BACKING_FILE_OFFSET = 8; // u64
const QCOW2_BACKING_FILE_SIZE = 16; // u32
const QCOW2_INCOMPATIBLE_FEATURES = 72; // u64, version 3 and later
const QCOW2_V3_HEADER_END = QCOW2_INCOMPATIBLE_FEATURES + 8;
const QCOW2_INCOMPAT_DATA_FILE = 1n << 2n; // "External data file" bit

/** Why a pulled file is not taken as a disk image. */
export class DiskImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DiskImageError";
  }
}

/** The file is something else: an error page, an archive, a filesystem without a disk. */
export class NotADiskImageError extends DiskImageError {
  constructor(message: string) {
    super(message);
    this.name = "NotADiskImageError";
  }
}

/** A qcow2 that would make QEMU open a host file: a backing file or an external data file. */
export class UnsafeDiskImageError extends DiskImageError {
  constructor(message: string) {
    super(message);
    this.name = "UnsafeDiskImageError";
  }
}

const KNOWN: { what: string; test: (b: Buffer) => boolean }[] = [
  { what: "gzip data", test: (b) => b[0] === 0x1f && b[1] === 0x8b },
  {
    what: "xz data",
    test: (b) => b.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])),
  },
  { what: "zstd data", test: (b) => b.readUInt32LE(0) === 0xfd2fb528 },
  { what: "bzip2 data", test: (b) => b.subarray(0, 3).toString("latin1") === "BZh" },
  { what: "a zip archive", test: (b) => b.subarray(0, 4).toString("latin1") === "PK\x03\x04" },
  { what: "a tar archive", test: (b) => b.subarray(257, 262).toString("latin1") === "ustar" },
  { what: "a VMDK image", test: (b) => b.subarray(0, 4).toString("latin1") === "KDMV" },
  { what: "a VDI image", test: (b) => b.subarray(64, 68).readUInt32LE(0) === 0xbeda107f },
  {
    what: "an HTML or text page",
    test: (b) =>
      /^\s*(<!doctype|<html|<\?xml|<head|<body|\{|\[)/i.test(b.subarray(0, 256).toString("latin1")),
  },
];

export function detectDiskFormat(header: Buffer): DiskFormat {
  if (header.length >= 4 && header.subarray(0, 4).equals(QCOW2_MAGIC)) {
    checkQcow2SelfContained(header);
    return "qcow2";
  }
  if (header.length >= 512) {
    if (header[MBR_SIGNATURE_OFFSET] === 0x55 && header[MBR_SIGNATURE_OFFSET + 1] === 0xaa)
      return "raw";
    if (header.subarray(GPT_HEADER_OFFSET, GPT_HEADER_OFFSET + 8).equals(GPT_SIGNATURE))
      return "raw";
  }
  const padded =
    header.length >= 512 ? header : Buffer.concat([header, Buffer.alloc(512 - header.length)]);
  const known = KNOWN.find((k) => k.test(padded));
  const what = known
    ? `looks like ${known.what}`
    : header.length < 512
      ? `only ${header.length} bytes`
      : "no qcow2 magic and no MBR/GPT partition table";
  throw new NotADiskImageError(
    `not a disk image: ${what} (vmlet takes qcow2, or raw disks with a partition table)`,
  );
}

/** Throws unless the qcow2 header names neither a backing file nor an external data file. */
function checkQcow2SelfContained(header: Buffer): void {
  const refuse = (why: string) =>
    new UnsafeDiskImageError(
      `qcow2 refused: ${why}; QEMU would open that host file for the guest (vmlet takes self-contained qcow2 images)`,
    );
  if (header.length < QCOW2_BACKING_FILE_SIZE + 4)
    throw new NotADiskImageError(`not a disk image: a qcow2 header cut at ${header.length} bytes`);
  const version = header.readUInt32BE(QCOW2_VERSION_OFFSET);
  const backingOffset = header.readBigUInt64BE(QCOW2_BACKING_FILE_OFFSET);
  if (backingOffset !== 0n) {
    const size = header.readUInt32BE(QCOW2_BACKING_FILE_SIZE);
    const end = backingOffset + BigInt(size);
    const name =
      end <= BigInt(header.length)
        ? ` ${JSON.stringify(header.subarray(Number(backingOffset), Number(end)).toString("utf8"))}`
        : "";
    throw refuse(`its header names a backing file${name}`);
  }
  if (version >= 3) {
    if (header.length < QCOW2_V3_HEADER_END)
      throw new NotADiskImageError(
        `not a disk image: a qcow2 version ${version} header cut at ${header.length} bytes`,
      );
    if (header.readBigUInt64BE(QCOW2_INCOMPATIBLE_FEATURES) & QCOW2_INCOMPAT_DATA_FILE)
      throw refuse("its header says its data is in an external data file");
  }
}
