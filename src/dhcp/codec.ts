// DHCPv4 wire format (RFC 2131, options RFC 2132, 3396, 3397, 3442): a strict parser
// that turns a datagram into a typed message or a typed error, and a formatter.
//
// Why not the npm `dhcp` package (0.2.20, evaluated in a scratch dir): its parse()
// accepts an option whose length runs past the buffer (`53,5,1` parses as type 1), reads
// option 121 as a list of plain IPs ("24.10.0.255"), throws a RangeError from deep
// inside on a correct RFC 3442 route or a 2-byte option 50, returns option 119 as one
// raw string with the length bytes in it, and its format() throws on options 119 and
// 121. A guest's bytes need a parser that says *why* it refused, and the two options
// that carry a pod's routing and search list must be right, so the codec is our own.
// Over 400 lines: the parser and the formatter of each option sit together, so a field's
// two directions are checked side by side.

import { bytesToIp, hostBitsClear, type Ipv4Route, ipToBytes, ipv4ToUint32 } from "../util/ip";
import { macToString } from "../util/mac";
/** Why a datagram was refused; the server counts drops by these. */
export type DhcpParseReason =
  | "truncated"
  | "oversized"
  | "bad-cookie"
  | "bad-op"
  | "bad-hlen"
  | "bad-option-length"
  | "bad-overload";

export class DhcpParseError extends Error {
  readonly reason: DhcpParseReason;
  constructor(reason: DhcpParseReason, detail: string) {
    super(`DHCP parse: ${reason}: ${detail}`);
    this.name = "DhcpParseError";
    this.reason = reason;
  }
}

/** RFC 2132 section 9.6 (option 53). */
export const MessageType = {
  DISCOVER: 1,
  OFFER: 2,
  REQUEST: 3,
  DECLINE: 4,
  ACK: 5,
  NAK: 6,
  RELEASE: 7,
  INFORM: 8,
} as const;
export type MessageTypeCode = (typeof MessageType)[keyof typeof MessageType];

/** Option codes this codec knows by name (RFC 2132 unless noted). */
export const Option = {
  PAD: 0,
  SUBNET_MASK: 1,
  ROUTER: 3,
  DNS: 6,
  HOSTNAME: 12,
  DOMAIN: 15,
  MTU: 26,
  BROADCAST: 28,
  REQUESTED_IP: 50,
  LEASE_TIME: 51,
  OVERLOAD: 52,
  MESSAGE_TYPE: 53,
  SERVER_ID: 54,
  PARAMETER_REQUEST_LIST: 55,
  MESSAGE: 56,
  MAX_MESSAGE_SIZE: 57,
  RENEWAL_TIME: 58,
  REBINDING_TIME: 59,
  CLIENT_ID: 61,
  SEARCH_LIST: 119, // RFC 3397
  CLASSLESS_ROUTES: 121, // RFC 3442
  END: 255,
} as const;

export const BOOTREQUEST = 1;
export const BOOTREPLY = 2;
export const HTYPE_ETHERNET = 1;
export const SERVER_PORT = 67;
export const CLIENT_PORT = 68;
export const FLAG_BROADCAST = 0x8000;

const MAGIC_COOKIE = 0x63825363;
/** op..file: the fixed BOOTP header. */
const HEADER_LENGTH = 236;
const OPTIONS_OFFSET = HEADER_LENGTH + 4;
const SNAME_OFFSET = 44;
const SNAME_LENGTH = 64;
const FILE_OFFSET = 108;
const FILE_LENGTH = 128;
/** A client's datagram never outgrows one Ethernet frame: 1500 - IP - UDP. */
export const MAX_DATAGRAM = 1472;
/** What a client must accept when it names no maximum (RFC 2131 section 2): 576 - IP - UDP. */
export const DEFAULT_MAX_MESSAGE = 576 - 28;
/** Replies are padded to the BOOTP size some clients insist on. */
const MIN_REPLY = 300;

/** The options this codec understands, decoded; every option also stays raw. */
export interface DhcpOptions {
  messageType?: number;
  subnetMask?: string;
  routers?: string[];
  dns?: string[];
  hostname?: string;
  domain?: string;
  mtu?: number;
  broadcast?: string;
  requestedIp?: string;
  leaseSeconds?: number;
  serverId?: string;
  parameterRequestList?: number[];
  message?: string;
  maxMessageSize?: number;
  renewalSeconds?: number;
  rebindingSeconds?: number;
  clientId?: Buffer;
  searchList?: string[];
  classlessRoutes?: Ipv4Route[];
}

export interface DhcpMessage {
  op: number;
  htype: number;
  hlen: number;
  hops: number;
  xid: number;
  secs: number;
  flags: number;
  ciaddr: string;
  yiaddr: string;
  siaddr: string;
  giaddr: string;
  /** The 16-byte chaddr field as sent. */
  chaddr: Buffer;
  /** chaddr's first hlen bytes, lower-case colon-separated. */
  mac: string;
  sname: Buffer;
  file: Buffer;
  options: DhcpOptions;
  /** Every option's value, instances of one code concatenated (RFC 3396). */
  rawOptions: Map<number, Buffer>;
}

// ---------------------------------------------------------------- addresses

function readIp(buf: Buffer, offset: number): string {
  return bytesToIp(buf.subarray(offset, offset + 4));
}

/** Four bytes; an IPv6 address (which ipToBytes would take) is refused here. */
function ipBytes(ip: string): Buffer {
  ipv4ToUint32(ip);
  return ipToBytes(ip);
}

// ---------------------------------------------------------------- parse

/** Parses one datagram a client sent; throws DhcpParseError and nothing else. */
export function parseMessage(buf: Buffer): DhcpMessage {
  if (buf.length > MAX_DATAGRAM) {
    throw new DhcpParseError("oversized", `${buf.length} bytes > ${MAX_DATAGRAM}`);
  }
  if (buf.length < OPTIONS_OFFSET) {
    throw new DhcpParseError("truncated", `${buf.length} bytes < ${OPTIONS_OFFSET}`);
  }
  const op = buf[0]!;
  if (op !== BOOTREQUEST && op !== BOOTREPLY) throw new DhcpParseError("bad-op", `op ${op}`);
  const hlen = buf[2]!;
  if (hlen > 16) throw new DhcpParseError("bad-hlen", `hlen ${hlen} > 16`);
  if (buf.readUInt32BE(HEADER_LENGTH) !== MAGIC_COOKIE) {
    throw new DhcpParseError("bad-cookie", `0x${buf.readUInt32BE(HEADER_LENGTH).toString(16)}`);
  }
  const chaddr = Buffer.from(buf.subarray(28, 44));
  const sname = Buffer.from(buf.subarray(SNAME_OFFSET, SNAME_OFFSET + SNAME_LENGTH));
  const file = Buffer.from(buf.subarray(FILE_OFFSET, FILE_OFFSET + FILE_LENGTH));

  const chunks = new Map<number, Buffer[]>();
  readOptionArea(buf.subarray(OPTIONS_OFFSET), "options", chunks);
  // Option overload (52) moves more options into file and/or sname, read in that order.
  const overload = chunks.get(Option.OVERLOAD);
  if (overload) {
    const value = Buffer.concat(overload);
    if (value.length !== 1 || value[0]! < 1 || value[0]! > 3) {
      throw new DhcpParseError("bad-overload", `option 52 = ${value.toString("hex")}`);
    }
    if (value[0]! & 1) readOptionArea(file, "file", chunks);
    if (value[0]! & 2) readOptionArea(sname, "sname", chunks);
  }
  const rawOptions = new Map<number, Buffer>();
  for (const [code, parts] of chunks) rawOptions.set(code, Buffer.concat(parts));

  return {
    op,
    htype: buf[1]!,
    hlen,
    hops: buf[3]!,
    xid: buf.readUInt32BE(4),
    secs: buf.readUInt16BE(8),
    flags: buf.readUInt16BE(10),
    ciaddr: readIp(buf, 12),
    yiaddr: readIp(buf, 16),
    siaddr: readIp(buf, 20),
    giaddr: readIp(buf, 24),
    chaddr,
    mac: macToString(chaddr.subarray(0, hlen)),
    sname,
    file,
    options: decodeOptions(rawOptions),
    rawOptions,
  };
}

/** Splits one option area into code → value pieces; stops at END or the area's end. */
function readOptionArea(area: Buffer, where: string, into: Map<number, Buffer[]>): void {
  let i = 0;
  while (i < area.length) {
    const code = area[i]!;
    if (code === Option.END) return;
    if (code === Option.PAD) {
      i++;
      continue;
    }
    if (i + 1 >= area.length) {
      throw new DhcpParseError("bad-option-length", `option ${code} in ${where}: no length`);
    }
    const len = area[i + 1]!;
    const end = i + 2 + len;
    if (end > area.length) {
      throw new DhcpParseError(
        "bad-option-length",
        `option ${code} in ${where}: length ${len} runs past the end`,
      );
    }
    if (code === Option.OVERLOAD && where !== "options") {
      throw new DhcpParseError("bad-overload", `option 52 inside ${where}`);
    }
    const list = into.get(code);
    const value = area.subarray(i + 2, end);
    if (list) list.push(value);
    else into.set(code, [value]);
    i = end;
  }
}

function lengthError(code: number, len: number, expected: string): DhcpParseError {
  return new DhcpParseError("bad-option-length", `option ${code}: length ${len}, ${expected}`);
}

function fixed(code: number, v: Buffer, len: number): Buffer {
  if (v.length !== len) throw lengthError(code, v.length, `expected ${len}`);
  return v;
}

function ipList(code: number, v: Buffer): string[] {
  if (v.length === 0 || v.length % 4 !== 0) {
    throw lengthError(code, v.length, "expected a non-zero multiple of 4");
  }
  const out: string[] = [];
  for (let i = 0; i < v.length; i += 4) out.push(readIp(v, i));
  return out;
}

function text(code: number, v: Buffer): string {
  if (v.length === 0) throw lengthError(code, 0, "expected at least 1");
  // NUL-terminated strings are common in the wild; the NUL is not part of the value.
  const nul = v.indexOf(0);
  return v.subarray(0, nul === -1 ? v.length : nul).toString("latin1");
}

function decodeOptions(raw: Map<number, Buffer>): DhcpOptions {
  const o: DhcpOptions = {};
  for (const [code, v] of raw) {
    switch (code) {
      case Option.MESSAGE_TYPE:
        o.messageType = fixed(code, v, 1)[0]!;
        break;
      case Option.SUBNET_MASK:
        o.subnetMask = readIp(fixed(code, v, 4), 0);
        break;
      case Option.ROUTER:
        o.routers = ipList(code, v);
        break;
      case Option.DNS:
        o.dns = ipList(code, v);
        break;
      case Option.HOSTNAME:
        o.hostname = text(code, v);
        break;
      case Option.DOMAIN:
        o.domain = text(code, v);
        break;
      case Option.MTU:
        o.mtu = fixed(code, v, 2).readUInt16BE(0);
        break;
      case Option.BROADCAST:
        o.broadcast = readIp(fixed(code, v, 4), 0);
        break;
      case Option.REQUESTED_IP:
        o.requestedIp = readIp(fixed(code, v, 4), 0);
        break;
      case Option.LEASE_TIME:
        o.leaseSeconds = fixed(code, v, 4).readUInt32BE(0);
        break;
      case Option.SERVER_ID:
        o.serverId = readIp(fixed(code, v, 4), 0);
        break;
      case Option.PARAMETER_REQUEST_LIST:
        if (v.length === 0) throw lengthError(code, 0, "expected at least 1");
        o.parameterRequestList = [...v];
        break;
      case Option.MESSAGE:
        o.message = text(code, v);
        break;
      case Option.MAX_MESSAGE_SIZE:
        o.maxMessageSize = fixed(code, v, 2).readUInt16BE(0);
        break;
      case Option.RENEWAL_TIME:
        o.renewalSeconds = fixed(code, v, 4).readUInt32BE(0);
        break;
      case Option.REBINDING_TIME:
        o.rebindingSeconds = fixed(code, v, 4).readUInt32BE(0);
        break;
      case Option.CLIENT_ID:
        if (v.length < 2) throw lengthError(code, v.length, "expected at least 2");
        o.clientId = Buffer.from(v);
        break;
      case Option.SEARCH_LIST:
        o.searchList = decodeSearchList(v);
        break;
      case Option.CLASSLESS_ROUTES:
        o.classlessRoutes = decodeClasslessRoutes(v);
        break;
      default:
        break;
    }
  }
  return o;
}

/** RFC 3397: RFC 1035 names back to back, compression pointers allowed (backwards only). */
export function decodeSearchList(v: Buffer): string[] {
  const names: string[] = [];
  let i = 0;
  while (i < v.length) {
    const { name, next } = readName(v, i);
    names.push(name);
    i = next;
  }
  return names;
}

function readName(v: Buffer, start: number): { name: string; next: number } {
  const labels: string[] = [];
  let i = start;
  let next = -1;
  let jumps = 0;
  let length = 0;
  for (;;) {
    if (i >= v.length) throw lengthError(Option.SEARCH_LIST, v.length, "name runs past the end");
    const len = v[i]!;
    if (len === 0) {
      if (next === -1) next = i + 1;
      break;
    }
    if ((len & 0xc0) === 0xc0) {
      if (i + 1 >= v.length) throw lengthError(Option.SEARCH_LIST, v.length, "cut pointer");
      const target = ((len & 0x3f) << 8) | v[i + 1]!;
      // Only pointers to earlier bytes: a loop cannot be built.
      if (target >= i || ++jumps > 64) {
        throw lengthError(Option.SEARCH_LIST, v.length, `bad pointer to ${target}`);
      }
      if (next === -1) next = i + 2;
      i = target;
      continue;
    }
    if (len > 63) throw lengthError(Option.SEARCH_LIST, v.length, `label length ${len}`);
    if (i + 1 + len > v.length) {
      throw lengthError(Option.SEARCH_LIST, v.length, "label runs past the end");
    }
    length += len + 1;
    if (length > 254) throw lengthError(Option.SEARCH_LIST, v.length, "name longer than 255");
    labels.push(v.subarray(i + 1, i + 1 + len).toString("latin1"));
    i += 1 + len;
  }
  return { name: labels.join("."), next };
}

/** RFC 3442: width, the significant octets of the destination, then the router. */
export function decodeClasslessRoutes(v: Buffer): Ipv4Route[] {
  const routes: Ipv4Route[] = [];
  let i = 0;
  while (i < v.length) {
    const width = v[i]!;
    if (width > 32) throw lengthError(Option.CLASSLESS_ROUTES, v.length, `width ${width}`);
    const significant = Math.ceil(width / 8);
    if (i + 1 + significant + 4 > v.length) {
      throw lengthError(Option.CLASSLESS_ROUTES, v.length, "route runs past the end");
    }
    const dst = Buffer.alloc(4);
    v.copy(dst, 0, i + 1, i + 1 + significant);
    routes.push({
      dst: readIp(dst, 0),
      prefixLength: width,
      gateway: readIp(v, i + 1 + significant),
    });
    i += 1 + significant + 4;
  }
  return routes;
}

// ---------------------------------------------------------------- encode

/** RFC 1035 names, each ending in its own zero label; no compression. */
export function encodeSearchList(names: string[]): Buffer {
  const parts: Buffer[] = [];
  for (const name of names) {
    const labels = name.replace(/\.$/, "").split(".");
    let length = 1;
    for (const label of labels) {
      if (label.length === 0 || label.length > 63 || !/^[\x21-\x7e]+$/.test(label)) {
        throw new Error(
          `search domain ${JSON.stringify(name)}: bad label ${JSON.stringify(label)}`,
        );
      }
      length += label.length + 1;
      parts.push(Buffer.from([label.length]), Buffer.from(label, "latin1"));
    }
    if (length > 255) throw new Error(`search domain ${JSON.stringify(name)}: longer than 255`);
    parts.push(Buffer.from([0]));
  }
  return Buffer.concat(parts);
}

export function encodeClasslessRoutes(routes: Ipv4Route[]): Buffer {
  const parts: Buffer[] = [];
  for (const r of routes) {
    const significant = Math.ceil(r.prefixLength / 8);
    const dst = ipBytes(r.dst);
    if (!Number.isInteger(r.prefixLength) || r.prefixLength < 0 || r.prefixLength > 32) {
      throw new Error(`route ${r.dst}/${r.prefixLength}: prefix length not in 0..32`);
    }
    if (!hostBitsClear(r.dst, r.prefixLength)) {
      throw new Error(`route ${r.dst}/${r.prefixLength}: host bits set`);
    }
    parts.push(Buffer.from([r.prefixLength]), dst.subarray(0, significant), ipBytes(r.gateway));
  }
  return Buffer.concat(parts);
}

export function u8(v: number): Buffer {
  return Buffer.from([v]);
}

export function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
}

export function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

export function ips(list: string[]): Buffer {
  return Buffer.concat(list.map(ipBytes));
}

/** One option as bytes; a value over 255 bytes becomes consecutive instances (RFC 3396). */
export function encodeOption(code: number, value: Buffer): Buffer {
  if (value.length === 0) return Buffer.from([code, 0]);
  const parts: Buffer[] = [];
  for (let i = 0; i < value.length; i += 255) {
    const piece = value.subarray(i, i + 255);
    parts.push(Buffer.from([code, piece.length]), piece);
  }
  return Buffer.concat(parts);
}

export interface ReplyHeader {
  op?: number;
  xid: number;
  flags: number;
  ciaddr?: string;
  yiaddr?: string;
  siaddr?: string;
  giaddr?: string;
  chaddr: Buffer;
  htype?: number;
  hlen?: number;
}

/**
 * Formats a message. `options` go out in the order given; when `maxLength` (the whole
 * DHCP message) would be exceeded, the options that no longer fit are left out, so put
 * the ones that must arrive first. Returns the datagram and the codes left out.
 */
export function formatMessage(
  header: ReplyHeader,
  options: [number, Buffer][],
  maxLength = MAX_DATAGRAM,
): { datagram: Buffer; omitted: number[] } {
  const head = Buffer.alloc(OPTIONS_OFFSET);
  writeHeader(head, header);

  const body: Buffer[] = [];
  const omitted: number[] = [];
  let used = OPTIONS_OFFSET + 1; // the END option
  for (const [code, value] of options) {
    const encoded = encodeOption(code, value);
    if (used + encoded.length > maxLength) {
      omitted.push(code);
      continue;
    }
    body.push(encoded);
    used += encoded.length;
  }
  body.push(Buffer.from([Option.END]));
  const datagram = Buffer.concat([head, ...body]);
  const padded = datagram.length < MIN_REPLY && maxLength >= MIN_REPLY;
  return {
    datagram: padded
      ? Buffer.concat([datagram, Buffer.alloc(MIN_REPLY - datagram.length)])
      : datagram,
    omitted,
  };
}

/** The options area of a datagram formatMessage made (END and padding included). */
export function optionsArea(datagram: Buffer): Buffer {
  return datagram.subarray(OPTIONS_OFFSET);
}

/**
 * A message from a header and an options area made before (optionsArea): one buffer,
 * the same bytes formatMessage would give for those options.
 */
export function formatWithOptionsArea(header: ReplyHeader, area: Buffer): Buffer {
  const datagram = Buffer.alloc(OPTIONS_OFFSET + area.length);
  writeHeader(datagram, header);
  area.copy(datagram, OPTIONS_OFFSET);
  return datagram;
}

function writeHeader(head: Buffer, header: ReplyHeader): void {
  head[0] = header.op ?? BOOTREPLY;
  head[1] = header.htype ?? HTYPE_ETHERNET;
  head[2] = header.hlen ?? 6;
  head.writeUInt32BE(header.xid >>> 0, 4);
  head.writeUInt16BE(header.flags & 0xffff, 10);
  head.writeUInt32BE(ipv4ToUint32(header.ciaddr ?? "0.0.0.0"), 12);
  head.writeUInt32BE(ipv4ToUint32(header.yiaddr ?? "0.0.0.0"), 16);
  head.writeUInt32BE(ipv4ToUint32(header.siaddr ?? "0.0.0.0"), 20);
  head.writeUInt32BE(ipv4ToUint32(header.giaddr ?? "0.0.0.0"), 24);
  header.chaddr.copy(head, 28, 0, Math.min(16, header.chaddr.length));
  head.writeUInt32BE(MAGIC_COOKIE, HEADER_LENGTH);
}
