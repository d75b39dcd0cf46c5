// The netlink attribute encoding shared by rtnl.ts, tc.ts and the message parsers.

/** One netlink attribute (struct nlattr + payload, padded to 4 bytes). */
export function attr(type: number, payload: Buffer): Buffer {
  const len = 4 + payload.length;
  const out = Buffer.alloc((len + 3) & ~3);
  out.writeUInt16LE(len, 0);
  out.writeUInt16LE(type, 2);
  payload.copy(out, 4);
  return out;
}

/** Calls `fn` with each attribute (type without the nested/byte-order bits) in `b`. */
export function eachAttr(
  b: Buffer,
  start: number,
  fn: (type: number, value: Buffer) => void,
): void {
  let at = start;
  while (at + 4 <= b.length) {
    const len = b.readUInt16LE(at);
    if (len < 4 || at + len > b.length) break;
    fn(b.readUInt16LE(at + 2) & 0x3fff, b.subarray(at + 4, at + len));
    at += (len + 3) & ~3;
  }
}
