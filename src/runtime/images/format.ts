// Which disk images vmlet accepts, decided by their first bytes, so that an HTML error
// page, a tarball or a compressed file is refused at pull time rather than failing
// to boot. Accepted:
//   qcow2: the magic "QFI\xfb" at offset 0;
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

export class NotADiskImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NotADiskImageError";
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
  if (header.length >= 4 && header.subarray(0, 4).equals(QCOW2_MAGIC)) return "qcow2";
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
