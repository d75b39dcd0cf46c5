// Pod annotations that shape the pod's network, validated before anything is built.
import net from "node:net";
import type { IpAddress } from "../tapmanager/types";
import { hostBitsClear } from "../util/ip";
import { invalidArgument } from "./errors";

/**
 * Extra source prefixes the guest may send from (comma-separated CIDRs, IPv4 and IPv6),
 * for an NFV pod that routes or holds more addresses; in the spirit of Calico's
 * allowedSourcePrefixes.
 */
export const ANNOTATION_ALLOWED_SOURCE_PREFIXES = "vmlet.io/allowed-source-prefixes";
/** Each prefix is a few instructions in the classifier; far more than any NFV pod needs. */
const MAX_PREFIXES = 64;

/** The annotation's prefixes; an INVALID_ARGUMENT naming the annotation when it is bad. */
export function allowedSourcePrefixes(annotations: Record<string, string>): IpAddress[] {
  const raw = annotations[ANNOTATION_ALLOWED_SOURCE_PREFIXES];
  if (raw === undefined) return [];
  const bad = (why: string) =>
    invalidArgument(
      `annotation ${ANNOTATION_ALLOWED_SOURCE_PREFIXES}=${JSON.stringify(raw)}: ${why}`,
    );
  const items = raw
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (items.length === 0) throw bad("want comma-separated CIDRs such as 10.10.0.0/24,fd00:1::/64");
  if (items.length > MAX_PREFIXES) throw bad(`at most ${MAX_PREFIXES} prefixes`);
  return items.map((item) => {
    const m = /^([^/]+)\/(\d{1,3})$/.exec(item);
    if (!m) throw bad(`${JSON.stringify(item)} is not a CIDR (address/length)`);
    const family = net.isIPv4(m[1]) ? 4 : net.isIPv6(m[1]) ? 6 : 0;
    if (family === 0) throw bad(`${JSON.stringify(m[1])} is not an IP address`);
    const prefixLength = Number(m[2]);
    const max = family === 4 ? 32 : 128;
    if (prefixLength > max) throw bad(`${item}: the prefix length is more than ${max}`);
    if (!hostBitsClear(m[1], prefixLength)) throw bad(`${item}: host bits are set`);
    return { family, address: m[1], prefixLength };
  });
}
