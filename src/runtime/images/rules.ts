// The image rules file: how an image name kubelet asks for becomes a URL of a disk image.
//   [{"name": "vmlet.io/cirros", "url": "http://host/cirros.qcow2", "sha256": "..."},
//    {"prefix": "vmlet.io/", "url": "http://host/images/"}]
// Exact names are tried first, then the longest matching prefix. A name without a tag
// means `:latest`. A prefix rule appends the rest of the name to its URL, with a
// `:latest` tag left off, so `vmlet.io/cirros` and `vmlet.io/cirros:latest` are one URL;
// the rest is checked (no `..`, `?`, `#`, `%`, empty segments) and percent-encoded.
// A digest reference without a tag (`vmlet.io/cirros@sha256:...`) is looked up as
// `:latest` but gets no tag: pulling it must not move `:latest`.
import fs from "node:fs";

export interface ImageRule {
  name?: string;
  prefix?: string;
  url: string;
  sha256?: string;
}

export interface ResolvedImage {
  /** The normalized name, with a tag; none for a digest reference without one. */
  tag?: string;
  /** The name without tag or digest: the repository. */
  repository: string;
  url: string;
  /** Hex digest the download must have, from the rule or an `@sha256:` reference. */
  sha256?: string;
}

export class ImageRulesError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ImageRulesError";
  }
}

const SHA256_RE = /^[0-9a-f]{64}$/;

export function parseImageRules(text: string, source: string): ImageRule[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new ImageRulesError(`image rules ${source}: not JSON: ${String(error)}`);
  }
  if (!Array.isArray(parsed)) throw new ImageRulesError(`image rules ${source}: not a list`);
  return parsed.map((entry: unknown, i) => {
    const where = `image rules ${source}: entry ${i}`;
    if (typeof entry !== "object" || entry === null)
      throw new ImageRulesError(`${where}: not an object`);
    const e = entry as Record<string, unknown>;
    const url = e.url;
    if (typeof url !== "string" || !/^https?:\/\//.test(url)) {
      throw new ImageRulesError(`${where}: url must be an http(s) URL`);
    }
    const hasName = typeof e.name === "string" && e.name !== "";
    const hasPrefix = typeof e.prefix === "string" && e.prefix !== "";
    if (hasName === hasPrefix)
      throw new ImageRulesError(`${where}: needs exactly one of name, prefix`);
    if (e.sha256 !== undefined && (typeof e.sha256 !== "string" || !SHA256_RE.test(e.sha256))) {
      throw new ImageRulesError(`${where}: sha256 must be 64 lowercase hex digits`);
    }
    if (hasPrefix && e.sha256 !== undefined)
      throw new ImageRulesError(`${where}: sha256 needs a name rule`);
    const name = hasName ? normalizeImageName(e.name as string) : undefined;
    if (name?.sha256)
      throw new ImageRulesError(`${where}: name must not carry a digest; give it as sha256`);
    return name
      ? {
          name: lookupName(name),
          url,
          sha256: e.sha256 as string | undefined,
        }
      : { prefix: e.prefix as string, url };
  });
}

export function loadImageRules(file: string): ImageRule[] {
  return parseImageRules(fs.readFileSync(file, "utf8"), file);
}

export interface ImageName {
  repository: string;
  /** `repository:tag`; `:latest` when the name has neither tag nor digest, none for a bare digest. */
  tag?: string;
  sha256?: string;
}

/** `name`, `name:tag`, `name@sha256:hex`; a registry port (`host:5000/x`) is not a tag. */
export function normalizeImageName(name: string): ImageName {
  let rest = name.trim();
  let sha256: string | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    const digest = rest.slice(at + 1);
    if (!digest.startsWith("sha256:") || !SHA256_RE.test(digest.slice(7))) {
      throw new ImageRulesError(`image ${JSON.stringify(name)}: digest must be sha256:<64 hex>`);
    }
    sha256 = digest.slice(7);
    rest = rest.slice(0, at);
  }
  const slash = rest.lastIndexOf("/");
  const colon = rest.lastIndexOf(":");
  const hasTag = colon > slash;
  const repository = hasTag ? rest.slice(0, colon) : rest;
  if (repository === "") throw new ImageRulesError(`image ${JSON.stringify(name)}: empty name`);
  const tag = hasTag
    ? `${repository}:${rest.slice(colon + 1)}`
    : sha256
      ? undefined
      : `${repository}:latest`;
  return { repository, tag, sha256 };
}

/** How a name reads in messages and keys: its tag, else `repository@sha256:<hex>`. */
export function imageReference(n: ImageName): string {
  return n.tag ?? `${n.repository}@sha256:${n.sha256}`;
}

/** The rule name a reference is looked up by: a bare digest is looked up as `:latest`. */
function lookupName(n: ImageName): string {
  return n.tag ?? `${n.repository}:latest`;
}

export function resolveImage(rules: ImageRule[], name: string): ResolvedImage | undefined {
  const n = normalizeImageName(name);
  const exact = rules.find((r) => r.name === lookupName(n));
  if (exact) {
    if (n.sha256 && exact.sha256 && n.sha256 !== exact.sha256) {
      throw new ImageRulesError(
        `image ${name}: digest sha256:${n.sha256} differs from the rule's sha256:${exact.sha256}`,
      );
    }
    return {
      tag: n.tag,
      repository: n.repository,
      url: exact.url,
      sha256: n.sha256 ?? exact.sha256,
    };
  }
  let best: ImageRule | undefined;
  for (const r of rules) {
    if (
      r.prefix &&
      n.repository.startsWith(r.prefix) &&
      r.prefix.length > (best?.prefix?.length ?? -1)
    ) {
      best = r;
    }
  }
  if (!best?.prefix) return undefined;
  const rest = lookupName(n)
    .slice(best.prefix.length)
    .replace(/:latest$/, "");
  return {
    tag: n.tag,
    repository: n.repository,
    url: best.url + urlPath(name, rest),
    sha256: n.sha256,
  };
}

// What would end a URL path, climb out of the rule's base, or be decoded again by the
// server: the pod's name picks a file under the base URL and nothing else.
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it finds
const UNSAFE_IN_SEGMENT = /[?#%\\\x00-\x1f\x7f]/;

/** A prefix rule's remainder as URL path segments, each checked and percent-encoded. */
function urlPath(name: string, rest: string): string {
  const fail = (why: string): never => {
    throw new ImageRulesError(`image ${JSON.stringify(name)}: ${why}`);
  };
  if (rest === "") fail("nothing after the image rule's prefix");
  return rest
    .split("/")
    .map((segment) => {
      if (segment === "") fail("an empty path segment (two slashes, or one at an end)");
      if (segment === "." || segment.includes("..")) {
        fail(`path segment ${JSON.stringify(segment)}: no "." or ".."`);
      }
      if (UNSAFE_IN_SEGMENT.test(segment)) {
        fail(
          `path segment ${JSON.stringify(segment)}: no ?, #, %, backslash or control characters`,
        );
      }
      // ":" (a tag) is allowed in a path segment as it is (RFC 3986 pchar).
      return encodeURIComponent(segment).replaceAll("%3A", ":");
    })
    .join("/");
}
