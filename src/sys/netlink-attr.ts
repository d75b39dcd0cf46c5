// The netlink attribute encoding shared by rtnl.ts, tc.ts and link-message.ts.

/** One netlink attribute (struct nlattr + payload, padded to 4 bytes). */
export function attr(type: number, payload: Buffer): Buffer {
  const len = 4 + payload.length;
  const out = Buffer.alloc((len + 3) & ~3);
  out.writeUInt16LE(len, 0);
  out.writeUInt16LE(type, 2);
  payload.copy(out, 4);
  return out;
}
