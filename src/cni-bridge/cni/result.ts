// One typed model for CNI results of every version from 0.3.0 to 1.1.0, and the wire
// form of that model at any of those versions (what a chained plugin gets as prevResult).
import net from "node:net";
import { atLeast, type CniVersion, isSupportedVersion } from "./version";

export interface CniInterface {
  name: string;
  mac?: string;
  /** The netns path for interfaces inside the pod; absent for host-side interfaces. */
  sandbox?: string;
  mtu?: number;
  socketPath?: string;
  pciID?: string;
}

export interface CniIp {
  /** Address and prefix, e.g. "10.22.0.5/16". */
  address: string;
  gateway?: string;
  /** Index into `interfaces`. */
  interface?: number;
}

export interface CniRoute {
  dst: string;
  gw?: string;
  mtu?: number;
  advmss?: number;
  priority?: number;
  table?: number;
  scope?: number;
}

export interface CniDns {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}

export interface CniResult {
  /** The version the result was produced at. */
  cniVersion: CniVersion;
  interfaces: CniInterface[];
  ips: CniIp[];
  routes: CniRoute[];
  dns: CniDns;
}

/** Why a result is invalid; the caller wraps it with the network, plugin and pod. */
export class ResultFormatError extends Error {}

type Json = Record<string, unknown>;

function isObject(x: unknown): x is Json {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function fail(what: string): never {
  throw new ResultFormatError(what);
}

function optString(o: Json, key: string, where: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") fail(`${where}.${key} is not a string`);
  return v;
}

function optInt(o: Json, key: string, where: string): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v)) fail(`${where}.${key} is not an integer`);
  return v;
}

function optStrings(o: Json, key: string, where: string): string[] | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || !v.every((s) => typeof s === "string")) {
    fail(`${where}.${key} is not a list of strings`);
  }
  return v as string[];
}

function ipFamily(ip: string): 4 | 6 | 0 {
  const f = net.isIP(ip);
  return f === 4 || f === 6 ? f : 0;
}

/** True for "addr/prefix" with a prefix that fits the family. */
export function isCidr(s: string): boolean {
  const slash = s.indexOf("/");
  if (slash < 0) return false;
  const family = ipFamily(s.slice(0, slash));
  const prefix = s.slice(slash + 1);
  if (family === 0 || !/^\d{1,3}$/.test(prefix)) return false;
  return Number(prefix) <= (family === 4 ? 32 : 128);
}

function cidrFamily(s: string): 4 | 6 {
  return ipFamily(s.slice(0, s.indexOf("/"))) as 4 | 6;
}

function withoutUndefined<T extends object>(o: T): T {
  for (const k of Object.keys(o) as (keyof T)[]) if (o[k] === undefined) delete o[k];
  return o;
}

function parseInterface(x: unknown, i: number): CniInterface {
  const where = `interfaces[${i}]`;
  if (!isObject(x)) fail(`${where} is not an object`);
  const name = optString(x, "name", where);
  if (!name) fail(`${where}.name is missing`);
  return withoutUndefined({
    name,
    mac: optString(x, "mac", where),
    sandbox: optString(x, "sandbox", where) || undefined,
    mtu: optInt(x, "mtu", where),
    socketPath: optString(x, "socketPath", where),
    pciID: optString(x, "pciID", where),
  });
}

function parseIp(x: unknown, i: number, interfaceCount: number, version: string): CniIp {
  const where = `ips[${i}]`;
  if (!isObject(x)) fail(`${where} is not an object`);
  const address = optString(x, "address", where);
  if (!address || !isCidr(address))
    fail(`${where}.address ${JSON.stringify(address)} is not a CIDR`);
  const gateway = optString(x, "gateway", where);
  if (gateway !== undefined && ipFamily(gateway) !== cidrFamily(address)) {
    fail(`${where}.gateway ${JSON.stringify(gateway)} is not an IP of the address's family`);
  }
  if (!atLeast(version, "1.0.0")) {
    const v = x.version;
    if (v !== "4" && v !== "6") fail(`${where}.version must be "4" or "6" at ${version}`);
    if (Number(v) !== cidrFamily(address)) fail(`${where}.version ${v} does not match ${address}`);
  }
  const index = optInt(x, "interface", where);
  if (index !== undefined && (index < 0 || index >= interfaceCount)) {
    fail(`${where}.interface ${index} is not an index into ${interfaceCount} interfaces`);
  }
  return withoutUndefined({ address, gateway, interface: index });
}

function parseRoute(x: unknown, i: number): CniRoute {
  const where = `routes[${i}]`;
  if (!isObject(x)) fail(`${where} is not an object`);
  const dst = optString(x, "dst", where);
  if (!dst || !isCidr(dst)) fail(`${where}.dst ${JSON.stringify(dst)} is not a CIDR`);
  const gw = optString(x, "gw", where);
  if (gw !== undefined && ipFamily(gw) !== cidrFamily(dst)) {
    fail(`${where}.gw ${JSON.stringify(gw)} is not an IP of the destination's family`);
  }
  return withoutUndefined({
    dst,
    gw,
    mtu: optInt(x, "mtu", where),
    advmss: optInt(x, "advmss", where),
    priority: optInt(x, "priority", where),
    table: optInt(x, "table", where),
    scope: optInt(x, "scope", where),
  });
}

function parseDns(x: unknown): CniDns {
  if (x === undefined || x === null) return {};
  if (!isObject(x)) fail("dns is not an object");
  return withoutUndefined({
    nameservers: optStrings(x, "nameservers", "dns"),
    domain: optString(x, "domain", "dns"),
    search: optStrings(x, "search", "dns"),
    options: optStrings(x, "options", "dns"),
  });
}

function list(x: Json, key: string): unknown[] {
  const v = x[key];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) fail(`${key} is not a list`);
  return v;
}

/**
 * Parses a result object of any supported version. `expectedVersion` is the version
 * the caller asked for; a result that names none is taken to be at that version.
 */
export function parseResult(raw: unknown, expectedVersion?: CniVersion): CniResult {
  if (!isObject(raw)) fail("not a JSON object");
  const version = raw.cniVersion ?? expectedVersion;
  if (!isSupportedVersion(version)) fail(`unsupported cniVersion ${JSON.stringify(version)}`);
  const interfaces = list(raw, "interfaces").map(parseInterface);
  return {
    cniVersion: version,
    interfaces,
    ips: list(raw, "ips").map((ip, i) => parseIp(ip, i, interfaces.length, version)),
    routes: list(raw, "routes").map(parseRoute),
    dns: parseDns(raw.dns),
  };
}

/** Parses plugin stdout (JSON text) into the model. */
export function parseResultText(text: string, expectedVersion?: CniVersion): CniResult {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new ResultFormatError(`not JSON: ${(error as Error).message}`);
  }
  return parseResult(raw, expectedVersion);
}

/**
 * The wire form of `result` at `version`: the JSON a plugin of that version expects as
 * prevResult. Fields the version does not know are dropped; 0.x results get ips[].version.
 */
export function toWire(result: CniResult, version: CniVersion): Json {
  const v11 = atLeast(version, "1.1.0");
  const interfaces = result.interfaces.map((itf) =>
    withoutUndefined({
      name: itf.name,
      mac: itf.mac,
      sandbox: itf.sandbox,
      mtu: v11 ? itf.mtu : undefined,
      socketPath: v11 ? itf.socketPath : undefined,
      pciID: v11 ? itf.pciID : undefined,
    }),
  );
  const ips = result.ips.map((ip) =>
    withoutUndefined({
      version: atLeast(version, "1.0.0") ? undefined : String(cidrFamily(ip.address)),
      address: ip.address,
      gateway: ip.gateway,
      interface: ip.interface,
    }),
  );
  const routes = result.routes.map((r) =>
    v11 ? withoutUndefined({ ...r }) : withoutUndefined({ dst: r.dst, gw: r.gw }),
  );
  const out: Json = { cniVersion: version };
  if (interfaces.length > 0) out.interfaces = interfaces;
  if (ips.length > 0) out.ips = ips;
  if (routes.length > 0) out.routes = routes;
  if (Object.keys(result.dns).length > 0) out.dns = { ...result.dns };
  return out;
}

/** The result as the model, restamped at `version` (wire conversion both ways). */
export function convertResult(result: CniResult, version: CniVersion): CniResult {
  return parseResult(toWire(result, version), version);
}
