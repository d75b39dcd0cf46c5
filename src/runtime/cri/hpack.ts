// HPACK (RFC 7541) for the CRI socket's authority front: a decoder that tracks a client's
// dynamic table, and a stateless encoder (static table and literals only), so a header
// block can be rewritten without the server ever seeing a dynamic table entry.
// Written here rather than taken from npm: hpack.js 2.1.6 is a stream API on
// readable-stream 2 with three more dependencies, hpack 1.0.0 is little used, and the
// front needs a small synchronous decoder with a hard bound on every length.
import { HUFFMAN_CODES } from "./huffman-table";

export interface HeaderField {
  name: string;
  value: string;
  /** Sent as "never indexed" (RFC 7541 6.2.3): kept so on re-encoding. */
  neverIndex: boolean;
}

export class HpackError extends Error {
  constructor(message: string) {
    super(`HPACK: ${message}`);
    this.name = "HpackError";
  }
}

/** RFC 7541 Appendix A. */
const STATIC_TABLE: readonly (readonly [string, string])[] = [
  [":authority", ""],
  [":method", "GET"],
  [":method", "POST"],
  [":path", "/"],
  [":path", "/index.html"],
  [":scheme", "http"],
  [":scheme", "https"],
  [":status", "200"],
  [":status", "204"],
  [":status", "206"],
  [":status", "304"],
  [":status", "400"],
  [":status", "404"],
  [":status", "500"],
  ["accept-charset", ""],
  ["accept-encoding", "gzip, deflate"],
  ["accept-language", ""],
  ["accept-ranges", ""],
  ["accept", ""],
  ["access-control-allow-origin", ""],
  ["age", ""],
  ["allow", ""],
  ["authorization", ""],
  ["cache-control", ""],
  ["content-disposition", ""],
  ["content-encoding", ""],
  ["content-language", ""],
  ["content-length", ""],
  ["content-location", ""],
  ["content-range", ""],
  ["content-type", ""],
  ["cookie", ""],
  ["date", ""],
  ["etag", ""],
  ["expect", ""],
  ["expires", ""],
  ["from", ""],
  ["host", ""],
  ["if-match", ""],
  ["if-modified-since", ""],
  ["if-none-match", ""],
  ["if-range", ""],
  ["if-unmodified-since", ""],
  ["last-modified", ""],
  ["link", ""],
  ["location", ""],
  ["max-forwards", ""],
  ["proxy-authenticate", ""],
  ["proxy-authorization", ""],
  ["range", ""],
  ["referer", ""],
  ["refresh", ""],
  ["retry-after", ""],
  ["server", ""],
  ["set-cookie", ""],
  ["strict-transport-security", ""],
  ["transfer-encoding", ""],
  ["user-agent", ""],
  ["vary", ""],
  ["via", ""],
  ["www-authenticate", ""],
];

/** RFC 7541 4.1: an entry's size is its octets plus 32. */
const ENTRY_OVERHEAD = 32;
/** SETTINGS_HEADER_TABLE_SIZE's initial value (RFC 9113 6.5.2), which Node's server keeps. */
export const DEFAULT_HEADER_TABLE_SIZE = 4096;
/** An integer past this is no header length or index anyone sends (RFC 7541 5.1 allows bounds). */
const MAX_INTEGER = 2 ** 28;

// Names and values are octets; latin1 maps each octet to one char and back, losslessly.
const OCTETS = "latin1";

// ---- Huffman (RFC 7541 5.2, Appendix B) ----

interface HuffmanNode {
  zero?: HuffmanNode;
  one?: HuffmanNode;
  symbol?: number;
}

const HUFFMAN_ROOT: HuffmanNode = buildHuffmanTree();

function buildHuffmanTree(): HuffmanNode {
  const root: HuffmanNode = {};
  HUFFMAN_CODES.forEach(([code, bits], symbol) => {
    let node = root;
    for (let i = bits - 1; i >= 0; i--) {
      const branch = (code >>> i) & 1 ? "one" : "zero";
      node[branch] ??= {};
      node = node[branch] as HuffmanNode;
    }
    node.symbol = symbol;
  });
  return root;
}

export function huffmanDecode(bytes: Buffer): string {
  const out = Buffer.allocUnsafe(Math.ceil((bytes.length * 8) / 5)); // the shortest code is 5 bits
  let n = 0;
  let node = HUFFMAN_ROOT;
  let depth = 0; // bits read since the last symbol
  let allOnes = true;
  for (const byte of bytes) {
    for (let i = 7; i >= 0; i--) {
      const bit = (byte >> i) & 1;
      const next = bit ? node.one : node.zero;
      if (!next) throw new HpackError("Huffman string holds EOS or an unknown code");
      depth++;
      allOnes &&= bit === 1;
      if (next.symbol !== undefined) {
        out[n++] = next.symbol;
        node = HUFFMAN_ROOT;
        depth = 0;
        allOnes = true;
      } else {
        node = next;
      }
    }
  }
  // What is left must be the most significant bits of EOS, shorter than an octet.
  if (depth > 7 || !allOnes) {
    throw new HpackError("Huffman string has invalid padding");
  }
  return out.toString(OCTETS, 0, n);
}

// ---- primitives (RFC 7541 5.1, 5.2) ----

class Reader {
  offset = 0;
  constructor(readonly bytes: Buffer) {}

  get done(): boolean {
    return this.offset >= this.bytes.length;
  }

  integer(prefixBits: number): number {
    const max = (1 << prefixBits) - 1;
    let value = this.bytes[this.offset++] & max;
    if (value < max) return value;
    for (let shift = 0; ; shift += 7) {
      if (this.offset >= this.bytes.length) throw new HpackError("integer runs past the block");
      const byte = this.bytes[this.offset++];
      value += (byte & 0x7f) * 2 ** shift;
      if (value > MAX_INTEGER) throw new HpackError("integer too large");
      if ((byte & 0x80) === 0) return value;
    }
  }

  string(): string {
    if (this.done) throw new HpackError("string runs past the block");
    const huffman = (this.bytes[this.offset] & 0x80) !== 0;
    const length = this.integer(7);
    if (this.offset + length > this.bytes.length) {
      throw new HpackError(`string of ${length} octets runs past the block`);
    }
    const raw = this.bytes.subarray(this.offset, this.offset + length);
    this.offset += length;
    return huffman ? huffmanDecode(raw) : raw.toString(OCTETS);
  }
}

function writeInteger(out: number[], value: number, prefixBits: number, firstByte: number): void {
  const max = (1 << prefixBits) - 1;
  if (value < max) {
    out.push(firstByte | value);
    return;
  }
  out.push(firstByte | max);
  let rest = value - max;
  while (rest >= 0x80) {
    out.push((rest & 0x7f) | 0x80);
    rest = Math.floor(rest / 0x80);
  }
  out.push(rest);
}

function writeString(out: number[], value: string): void {
  writeInteger(out, value.length, 7, 0x00); // raw octets: the front never Huffman-codes
  for (let i = 0; i < value.length; i++) out.push(value.charCodeAt(i) & 0xff);
}

// ---- decoder ----

/** One connection's decoding side: a dynamic table that follows the client's encoder. */
export class HpackDecoder {
  // Newest first, as the dynamic table is indexed (RFC 7541 2.3.3).
  private readonly entries: [string, string][] = [];
  private size = 0;
  private maxSize: number;
  private updates: number[] = [];

  /** `settingsLimit` is the SETTINGS_HEADER_TABLE_SIZE the server gave the client. */
  constructor(private readonly settingsLimit = DEFAULT_HEADER_TABLE_SIZE) {
    this.maxSize = settingsLimit;
  }

  get tableSize(): number {
    return this.size;
  }

  get tableLength(): number {
    return this.entries.length;
  }

  /** The table size updates at the start of the last block decoded, for re-encoding. */
  get sizeUpdates(): readonly number[] {
    return this.updates;
  }

  /** Decodes one complete header block; `maxListSize` bounds its decoded size (RFC 9113 6.5.2). */
  decode(block: Buffer, maxListSize: number): HeaderField[] {
    const r = new Reader(block);
    const fields: HeaderField[] = [];
    this.updates = [];
    let listSize = 0;
    while (!r.done) {
      const first = block[r.offset];
      let field: HeaderField;
      if (first & 0x80) {
        const [name, value] = this.lookup(r.integer(7));
        field = { name, value, neverIndex: false };
      } else if (first & 0x40) {
        field = this.literal(r, 6, false);
        this.insert(field.name, field.value);
      } else if (first & 0x20) {
        // A table size update is allowed only before the block's first field (RFC 7541 4.2).
        if (fields.length > 0) throw new HpackError("dynamic table size update after a header");
        const size = r.integer(5);
        if (size > this.settingsLimit) {
          throw new HpackError(
            `dynamic table size update to ${size} exceeds the limit ${this.settingsLimit}`,
          );
        }
        this.maxSize = size;
        this.updates.push(size);
        this.evict(0);
        continue;
      } else {
        field = this.literal(r, 4, (first & 0x10) !== 0);
      }
      listSize += field.name.length + field.value.length + ENTRY_OVERHEAD;
      if (listSize > maxListSize) {
        throw new HpackError(`header list larger than ${maxListSize} octets`);
      }
      fields.push(field);
    }
    return fields;
  }

  private literal(r: Reader, prefixBits: number, neverIndex: boolean): HeaderField {
    const index = r.integer(prefixBits);
    const name = index === 0 ? r.string() : this.lookup(index)[0];
    return { name, value: r.string(), neverIndex };
  }

  private lookup(index: number): readonly [string, string] {
    if (index === 0) throw new HpackError("index 0");
    if (index <= STATIC_TABLE.length) return STATIC_TABLE[index - 1];
    const entry = this.entries[index - STATIC_TABLE.length - 1];
    if (!entry) {
      throw new HpackError(
        `index ${index} past the dynamic table (${this.entries.length} entries)`,
      );
    }
    return entry;
  }

  private insert(name: string, value: string): void {
    const size = name.length + value.length + ENTRY_OVERHEAD;
    // An entry larger than the table empties it and is not added (RFC 7541 4.4).
    this.evict(size);
    if (size > this.maxSize) return;
    this.entries.unshift([name, value]);
    this.size += size;
  }

  private evict(room: number): void {
    while (this.entries.length > 0 && this.size + room > this.maxSize) {
      const [name, value] = this.entries.pop() as [string, string];
      this.size -= name.length + value.length + ENTRY_OVERHEAD;
    }
    if (this.entries.length === 0) this.size = 0;
  }
}

// ---- stateless encoder ----

const STATIC_EXACT = new Map<string, number>();
const STATIC_NAME = new Map<string, number>();
STATIC_TABLE.forEach(([name, value], i) => {
  STATIC_EXACT.set(`${name}\0${value}`, i + 1);
  if (!STATIC_NAME.has(name)) STATIC_NAME.set(name, i + 1);
});

/**
 * Encodes fields with the static table and literals "without indexing" only, so the
 * receiver's dynamic table is never touched and every block stands on its own.
 * `sizeUpdates` are passed on first: a decoder that lowered its table size in SETTINGS
 * insists on seeing the update (RFC 7541 4.2).
 */
export function encodeStateless(
  fields: readonly HeaderField[],
  sizeUpdates: readonly number[] = [],
): Buffer {
  const out: number[] = [];
  for (const size of sizeUpdates) writeInteger(out, size, 5, 0x20);
  for (const { name, value, neverIndex } of fields) {
    const exact = neverIndex ? undefined : STATIC_EXACT.get(`${name}\0${value}`);
    if (exact !== undefined) {
      writeInteger(out, exact, 7, 0x80);
      continue;
    }
    const first = neverIndex ? 0x10 : 0x00; // RFC 7541 6.2.3 / 6.2.2
    const nameIndex = STATIC_NAME.get(name);
    writeInteger(out, nameIndex ?? 0, 4, first);
    if (nameIndex === undefined) writeString(out, name);
    writeString(out, value);
  }
  return Buffer.from(out);
}
