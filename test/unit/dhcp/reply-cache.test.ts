// The user-space half of the kernel reply caches: the keys the classifiers must build for
// the same request bytes, and frames whose checksum sums, with the transaction id added
// as the classifier adds it, give the checksum the kernel's own UDP would send.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BOOTREQUEST, formatMessage, MessageType, Option, u8 } from "../../../src/dhcp/codec";
import {
  MAX_CACHED_REQUEST,
  replyCacheProgram,
  replyFrame,
  requestKey,
} from "../../../src/dhcp/reply-cache";
import { formatDhcp6 } from "../../../src/dhcp6/codec";
import {
  MAX_CACHED_MESSAGE,
  reply6CacheProgram,
  reply6Frame,
  request6Key,
} from "../../../src/dhcp6/reply-cache";

function sum(b: Buffer, start = 0): number {
  let s = start;
  for (let i = 0; i + 1 < b.length; i += 2) s += b.readUInt16BE(i);
  if (b.length % 2) s += b[b.length - 1]! << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

/** The checksum field the classifier leaves for a CHECKSUM_NONE skb: ~(pseudo + data + id). */
function kernelChecksum(pseudoSum: number, dataSum: number, id: Buffer): number {
  const c = ~sum(id, sum(Buffer.from([dataSum >> 8, dataSum & 0xff]), pseudoSum)) & 0xffff;
  return c === 0 ? 0xffff : c;
}

const chaddr = Buffer.from("525400aabb07", "hex");
const discover = (xid: number, secs = 0) => {
  const d = formatMessage({ op: BOOTREQUEST, xid, flags: 0, chaddr }, [
    [Option.MESSAGE_TYPE, u8(MessageType.DISCOVER)],
  ]).datagram;
  d.writeUInt16BE(secs, 8);
  return d;
};

describe("DHCPv4 reply cache: keys and frames", () => {
  it("two requests that differ only in xid and secs have one key; any other byte makes another", () => {
    const a = requestKey(discover(1, 0));
    assert.ok(a);
    assert.deepEqual(requestKey(discover(0xdeadbeef, 7)), a);
    const other = discover(1);
    other[other.length - 1] ^= 1;
    assert.notDeepEqual(requestKey(other), a);
    assert.equal(requestKey(Buffer.alloc(239)), undefined, "shorter than BOOTP");
    assert.equal(requestKey(Buffer.alloc(MAX_CACHED_REQUEST + 1)), undefined, "too long");
  });

  it("the frame's sums with an xid added give the UDP checksum of the frame with that xid", () => {
    const payload = discover(0x11223344);
    payload[0] = 2;
    const f = replyFrame({
      sourceMac: Buffer.from("020000000001", "hex"),
      destinationMac: Buffer.alloc(6, 0xff),
      source: "10.244.1.1",
      destination: "255.255.255.255",
      payload,
    });
    assert.equal(f.frame.readUInt32BE(46), 0, "xid zero in the stored frame");
    assert.equal(f.frame.readUInt16BE(40), 0, "UDP checksum zero in the stored frame");
    assert.equal(~sum(f.frame.subarray(14, 34)) & 0xffff, 0, "IPv4 header checksum");
    const xid = Buffer.from([0x11, 0x22, 0x33, 0x44]);
    const sent = Buffer.from(f.frame);
    xid.copy(sent, 46);
    sent.writeUInt16BE(kernelChecksum(f.pseudoSum, f.dataSum, xid), 40);
    const pseudo = Buffer.concat([
      sent.subarray(26, 34),
      Buffer.from([0, 17]),
      sent.subarray(38, 40),
    ]);
    assert.equal(~sum(Buffer.concat([pseudo, sent.subarray(34)])) & 0xffff, 0);
  });

  it("the classifier assembles", () => {
    assert.ok(replyCacheProgram({ cache: 3, scratch: 4, counters: 5 }).length > 0);
  });
});

describe("DHCPv6 reply cache: keys and frames", () => {
  const ll = "fe80::5054:ff:feaa:bb07";
  it("one key per source and message, the transaction id aside", () => {
    const a = request6Key(formatDhcp6(1, 0x123456, []), ll);
    assert.ok(a);
    assert.deepEqual(request6Key(formatDhcp6(1, 0x654321, []), `${ll}%br0`), a);
    assert.notDeepEqual(request6Key(formatDhcp6(3, 0x123456, []), ll), a, "another type");
    assert.notDeepEqual(request6Key(formatDhcp6(1, 0x123456, []), "fe80::1"), a, "another source");
    assert.equal(request6Key(Buffer.alloc(MAX_CACHED_MESSAGE + 1, 1), ll), undefined);
  });

  it("the frame's sums with a transaction id added give the UDP checksum", () => {
    const message = formatDhcp6(7, 0xabcdef, [Buffer.from("0002000401020304", "hex")]);
    const f = reply6Frame({
      sourceMac: Buffer.from("020000000001", "hex"),
      source: "fe80::1",
      destinationMac: Buffer.from("525400aabb07", "hex"),
      destination: ll,
      message,
    });
    assert.equal(f.frame.readUInt32BE(62), 7 << 24, "type kept, transaction id zero");
    const id = Buffer.from([0, 0xab, 0xcd, 0xef]);
    const sent = Buffer.from(f.frame);
    id.copy(sent, 63, 1);
    sent.writeUInt16BE(kernelChecksum(f.pseudoSum, f.dataSum, id), 60);
    const pseudo = Buffer.concat([
      sent.subarray(22, 54),
      Buffer.alloc(2),
      sent.subarray(58, 60),
      Buffer.from([0, 0, 0, 17]),
    ]);
    assert.equal(~sum(Buffer.concat([pseudo, sent.subarray(54)])) & 0xffff, 0);
  });

  it("the classifier assembles", () => {
    assert.ok(reply6CacheProgram({ cache: 3, scratch: 4, counters: 5 }).length > 0);
  });
});
