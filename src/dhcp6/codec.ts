// DHCPv6 wire format (RFC 8415; DNS options RFC 3646): a strict parser for what a client
// sends, turning a datagram into a typed message or a typed error, and the encoders the
// server's replies are built from. Relay messages are refused: a pod bridge has no relay.
import { bytesToIpv6, ipv6ToBytes } from "../util/ipv6";
import { macToBuffer, macToString } from "../util/mac";

/** Why a datagram was refused; the server counts drops by these. */
export type Dhcp6ParseReason =
  | "truncated"
  | "oversized"
  | "relayed"
  | "bad-option-length"
  | "duplicate-option"
  | "bad-duid"
  | "bad-domain";

export class Dhcp6ParseError extends Error {
  readonly reason: Dhcp6ParseReason;
  constructor(reason: Dhcp6ParseReason, detail: string) {
    super(`DHCPv6 parse: ${reason}: ${detail}`);
    this.name = "Dhcp6ParseError";
    this.reason = reason;
  }
}

/** RFC 8415 section 7.3. */
export const Dhcp6Type = {
  SOLICIT: 1,
  ADVERTISE: 2,
  REQUEST: 3,
  CONFIRM: 4,
  RENEW: 5,
  REBIND: 6,
  REPLY: 7,
  RELEASE: 8,
  DECLINE: 9,
  RECONFIGURE: 10,
  INFORMATION_REQUEST: 11,
  RELAY_FORW: 12,
  RELAY_REPL: 13,
} as const;

/** RFC 8415 section 21; 23 and 24 from RFC 3646. */
export const Dhcp6Option = {
  CLIENTID: 1,
  SERVERID: 2,
  IA_NA: 3,
  IA_TA: 4,
  IAADDR: 5,
  ORO: 6,
  PREFERENCE: 7,
  ELAPSED_TIME: 8,
  STATUS_CODE: 13,
  RAPID_COMMIT: 14,
  DNS_SERVERS: 23,
  DOMAIN_LIST: 24,
  IA_PD: 25,
} as const;

/** RFC 8415 section 21.13. */
export const Dhcp6Status = {
  SUCCESS: 0,
  UNSPEC_FAIL: 1,
  NO_ADDRS_AVAIL: 2,
  NO_BINDING: 3,
  NOT_ON_LINK: 4,
  USE_MULTICAST: 5,
} as const;

/** RFC 8415 section 11: DUID types, and hardware type 1 (Ethernet, RFC 826). */
export const DuidType = { LLT: 1, EN: 2, LL: 3, UUID: 4 } as const;
const HWTYPE_ETHERNET = 1;

export const CLIENT_PORT = 546;
export const SERVER_PORT = 547;
/** All_DHCP_Relay_Agents_and_Servers (RFC 8415 section 7.1). */
export const ALL_SERVERS = "ff02::1:2";
/** 1500 - IPv6 header - UDP header: a client's message fits one frame of the pod link. */
export const MAX_DATAGRAM = 1452;
const HEADER = 4;
/** A DUID is a 2-byte type and 1..128 bytes (RFC 8415 section 11.1). */
const DUID_MIN = 3;
const DUID_MAX = 130;

export interface Duid {
  type: number;
  /** The option's bytes as sent: compared as they are. */
  raw: Buffer;
  /** The link-layer address inside a DUID-LLT or DUID-LL of an Ethernet link. */
  mac?: string;
}

export interface Dhcp6StatusOption {
  code: number;
  message: string;
}

export interface IaAddress {
  address: string;
  preferredSeconds: number;
  validSeconds: number;
}

export interface IaNa {
  iaid: number;
  t1: number;
  t2: number;
  addresses: IaAddress[];
}

export interface Dhcp6Message {
  type: number;
  transactionId: number;
  clientId?: Duid;
  serverId?: Duid;
  iaNa: IaNa[];
  /** Whether the client asked for IA_TA or IA_PD, which this server never gives. */
  otherIa: boolean;
  oro: number[];
  rapidCommit: boolean;
  elapsedCentiseconds?: number;
  /** Every top-level option's value, in order (repeatable ones included). */
  rawOptions: { code: number; value: Buffer }[];
}

// ---------------------------------------------------------------- parse

interface RawOption {
  code: number;
  value: Buffer;
}

function readOptions(buf: Buffer, where: string): RawOption[] {
  const out: RawOption[] = [];
  let i = 0;
  while (i < buf.length) {
    if (i + 4 > buf.length) {
      throw new Dhcp6ParseError("bad-option-length", `${where}: option header at ${i} cut off`);
    }
    const code = buf.readUInt16BE(i);
    const length = buf.readUInt16BE(i + 2);
    if (i + 4 + length > buf.length) {
      throw new Dhcp6ParseError(
        "bad-option-length",
        `${where}: option ${code} length ${length} runs past the end`,
      );
    }
    out.push({ code, value: buf.subarray(i + 4, i + 4 + length) });
    i += 4 + length;
  }
  return out;
}

export function parseDuid(value: Buffer, which: string): Duid {
  if (value.length < DUID_MIN || value.length > DUID_MAX) {
    throw new Dhcp6ParseError("bad-duid", `${which}: ${value.length} bytes`);
  }
  const type = value.readUInt16BE(0);
  const duid: Duid = { type, raw: Buffer.from(value) };
  const lladdrAt = type === DuidType.LLT ? 8 : type === DuidType.LL ? 4 : -1;
  if (lladdrAt > 0) {
    if (value.length < lladdrAt) throw new Dhcp6ParseError("bad-duid", `${which}: type ${type}`);
    if (value.readUInt16BE(2) === HWTYPE_ETHERNET) {
      if (value.length !== lladdrAt + 6) {
        throw new Dhcp6ParseError(
          "bad-duid",
          `${which}: Ethernet address of ${value.length - lladdrAt} bytes`,
        );
      }
      duid.mac = macToString(value.subarray(lladdrAt));
    }
  } else if (type === DuidType.UUID && value.length !== 18) {
    throw new Dhcp6ParseError("bad-duid", `${which}: UUID of ${value.length - 2} bytes`);
  } else if (type === DuidType.EN && value.length < 7) {
    throw new Dhcp6ParseError("bad-duid", `${which}: DUID-EN of ${value.length} bytes`);
  }
  return duid;
}

function exact(code: number, value: Buffer, length: number): void {
  if (value.length !== length) {
    throw new Dhcp6ParseError("bad-option-length", `option ${code}: ${value.length} != ${length}`);
  }
}

function parseIaNa(value: Buffer): IaNa {
  if (value.length < 12) {
    throw new Dhcp6ParseError("bad-option-length", `IA_NA: ${value.length} bytes < 12`);
  }
  const ia: IaNa = {
    iaid: value.readUInt32BE(0),
    t1: value.readUInt32BE(4),
    t2: value.readUInt32BE(8),
    addresses: [],
  };
  for (const option of readOptions(value.subarray(12), `IA_NA ${ia.iaid}`)) {
    if (option.code === Dhcp6Option.IAADDR) {
      if (option.value.length < 24) {
        throw new Dhcp6ParseError("bad-option-length", `IAADDR: ${option.value.length} < 24`);
      }
      // Its own options (a status) are checked for framing only: a client sends none.
      readOptions(option.value.subarray(24), "IAADDR");
      ia.addresses.push({
        address: bytesToIpv6(option.value, 0),
        preferredSeconds: option.value.readUInt32BE(16),
        validSeconds: option.value.readUInt32BE(20),
      });
    } else if (option.code === Dhcp6Option.STATUS_CODE && option.value.length < 2) {
      throw new Dhcp6ParseError("bad-option-length", "IA_NA status code < 2 bytes");
    }
  }
  return ia;
}

/** RFC 1035 section 3.1 names, uncompressed (RFC 8415 section 10). */
export function decodeDomainList(value: Buffer): string[] {
  const names: string[] = [];
  let i = 0;
  while (i < value.length) {
    const labels: string[] = [];
    const start = i;
    for (;;) {
      if (i >= value.length) throw new Dhcp6ParseError("bad-domain", "name not terminated");
      const length = value[i]!;
      if (length === 0) {
        i++;
        break;
      }
      if (length > 63) throw new Dhcp6ParseError("bad-domain", `label length ${length}`);
      if (i + 1 + length > value.length) throw new Dhcp6ParseError("bad-domain", "label cut off");
      labels.push(value.toString("latin1", i + 1, i + 1 + length));
      i += 1 + length;
    }
    if (i - start > 255) throw new Dhcp6ParseError("bad-domain", `name of ${i - start} bytes`);
    names.push(labels.join("."));
  }
  return names;
}

/** Parses one datagram a client sent; throws Dhcp6ParseError and nothing else. */
export function parseDhcp6(buf: Buffer): Dhcp6Message {
  if (buf.length > MAX_DATAGRAM) {
    throw new Dhcp6ParseError("oversized", `${buf.length} bytes > ${MAX_DATAGRAM}`);
  }
  if (buf.length < HEADER) throw new Dhcp6ParseError("truncated", `${buf.length} bytes`);
  const type = buf[0]!;
  if (type === Dhcp6Type.RELAY_FORW || type === Dhcp6Type.RELAY_REPL) {
    throw new Dhcp6ParseError("relayed", `message type ${type}`);
  }
  const message: Dhcp6Message = {
    type,
    transactionId: buf.readUIntBE(1, 3),
    iaNa: [],
    otherIa: false,
    oro: [],
    rapidCommit: false,
    rawOptions: [],
  };
  const seen = new Set<number>();
  const once = (code: number, name: string) => {
    if (seen.has(code)) throw new Dhcp6ParseError("duplicate-option", name);
    seen.add(code);
  };
  for (const { code, value } of readOptions(buf.subarray(HEADER), "message")) {
    message.rawOptions.push({ code, value });
    switch (code) {
      case Dhcp6Option.CLIENTID:
        once(code, "CLIENTID");
        message.clientId = parseDuid(value, "CLIENTID");
        break;
      case Dhcp6Option.SERVERID:
        once(code, "SERVERID");
        message.serverId = parseDuid(value, "SERVERID");
        break;
      case Dhcp6Option.IA_NA: {
        const ia = parseIaNa(value);
        if (message.iaNa.some((other) => other.iaid === ia.iaid)) {
          throw new Dhcp6ParseError("duplicate-option", `IA_NA ${ia.iaid}`);
        }
        message.iaNa.push(ia);
        break;
      }
      case Dhcp6Option.IA_TA:
      case Dhcp6Option.IA_PD:
        message.otherIa = true;
        break;
      case Dhcp6Option.ORO:
        once(code, "ORO");
        if (value.length % 2 !== 0) {
          throw new Dhcp6ParseError("bad-option-length", `ORO: ${value.length} bytes`);
        }
        for (let i = 0; i < value.length; i += 2) message.oro.push(value.readUInt16BE(i));
        break;
      case Dhcp6Option.ELAPSED_TIME:
        once(code, "ELAPSED_TIME");
        exact(code, value, 2);
        message.elapsedCentiseconds = value.readUInt16BE(0);
        break;
      case Dhcp6Option.RAPID_COMMIT:
        once(code, "RAPID_COMMIT");
        exact(code, value, 0);
        message.rapidCommit = true;
        break;
      case Dhcp6Option.STATUS_CODE:
        if (value.length < 2) throw new Dhcp6ParseError("bad-option-length", "STATUS_CODE < 2");
        break;
      case Dhcp6Option.DNS_SERVERS:
        if (value.length % 16 !== 0) {
          throw new Dhcp6ParseError("bad-option-length", `DNS_SERVERS: ${value.length} bytes`);
        }
        break;
      case Dhcp6Option.DOMAIN_LIST:
        decodeDomainList(value);
        break;
      default:
        break; // unknown options are kept raw and otherwise ignored (section 16)
    }
  }
  return message;
}

// ---------------------------------------------------------------- format

export function option(code: number, value: Buffer): Buffer {
  if (value.length > 0xffff) throw new Error(`DHCPv6 option ${code}: ${value.length} bytes`);
  const header = Buffer.alloc(4);
  header.writeUInt16BE(code, 0);
  header.writeUInt16BE(value.length, 2);
  return Buffer.concat([header, value]);
}

function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value >>> 0);
  return b;
}

/** DUID-LL of an Ethernet MAC (RFC 8415 section 11.4): what the server names itself by. */
export function duidLl(mac: string): Buffer {
  const out = Buffer.alloc(10);
  out.writeUInt16BE(DuidType.LL, 0);
  out.writeUInt16BE(HWTYPE_ETHERNET, 2);
  macToBuffer(mac).copy(out, 4);
  return out;
}

export function statusOption(code: number, message: string): Buffer {
  const value = Buffer.alloc(2 + Buffer.byteLength(message, "utf8"));
  value.writeUInt16BE(code, 0);
  value.write(message, 2, "utf8");
  return option(Dhcp6Option.STATUS_CODE, value);
}

export function iaAddrOption(
  address: string,
  preferredSeconds: number,
  validSeconds: number,
  inner: Buffer[] = [],
): Buffer {
  return option(
    Dhcp6Option.IAADDR,
    Buffer.concat([ipv6ToBytes(address), u32(preferredSeconds), u32(validSeconds), ...inner]),
  );
}

export function iaNaOption(iaid: number, t1: number, t2: number, inner: Buffer[]): Buffer {
  return option(Dhcp6Option.IA_NA, Buffer.concat([u32(iaid), u32(t1), u32(t2), ...inner]));
}

export function addressesValue(addresses: string[]): Buffer {
  return Buffer.concat(addresses.map(ipv6ToBytes));
}

export function encodeDomainList(names: string[]): Buffer {
  const parts: Buffer[] = [];
  for (const name of names) {
    const labels = name.replace(/\.$/, "").split(".");
    let total = 1;
    for (const label of labels) {
      const bytes = Buffer.from(label, "latin1");
      if (bytes.length === 0 || bytes.length > 63) {
        throw new Error(`domain ${JSON.stringify(name)}: label of ${bytes.length} bytes`);
      }
      total += 1 + bytes.length;
      parts.push(Buffer.from([bytes.length]), bytes);
    }
    if (total > 255) throw new Error(`domain ${JSON.stringify(name)}: ${total} bytes > 255`);
    parts.push(Buffer.from([0]));
  }
  return Buffer.concat(parts);
}

/** A whole message: type, transaction id, then already-encoded options. */
export function formatDhcp6(type: number, transactionId: number, options: Buffer[]): Buffer {
  const header = Buffer.alloc(HEADER);
  header[0] = type;
  header.writeUIntBE(transactionId & 0xffffff, 1, 3);
  return Buffer.concat([header, ...options]);
}
