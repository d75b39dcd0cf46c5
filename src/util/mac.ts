// Ethernet MAC addresses as text ("0a:58:0a:f4:01:05", lower case) and as six bytes.

/** Six bytes (or fewer, as a DHCP chaddr may hold) as lower-case colon-separated hex. */
export function macToString(bytes: Buffer): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(":");
}

/** "0A:58:…" or "0a-58-…" as six bytes; throws naming the text when it is not a MAC. */
export function macToBuffer(mac: string): Buffer {
  const parts = mac.split(/[:-]/);
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) {
    throw new Error(`MAC ${JSON.stringify(mac)}: expected six hex octets separated by ':'`);
  }
  return Buffer.from(parts.map((p) => Number.parseInt(p, 16)));
}

/** A MAC in the one form vmlet compares and stores. */
export function normalMac(mac: string): string {
  return macToString(macToBuffer(mac));
}
