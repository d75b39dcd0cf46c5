// Disk images by digest: pulled over HTTP into a temp file, checked (format by header,
// digest when known), then moved into blobs/<sha256> and recorded. A pull that fails at
// any point leaves neither a blob nor a record; a crash mid-pull leaves a temp file
// that the next open removes.
// Just over 400 lines: the pull is one transaction (temp file, checks, rename, record)
// whose cleanup paths must be read together.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type { Logger } from "pino";
import { syncDir } from "../../util/atomic-file";
import { errorMessage } from "../../util/errors";
import { CriError } from "../errors";
import type { RecordStore } from "../store/record-store";
import type { ImageRecord } from "../store/records";
import { DiskImageError, detectDiskFormat, HEADER_BYTES, NotADiskImageError } from "./format";
import {
  type ImageName,
  type ImageRule,
  ImageRulesError,
  imageReference,
  normalizeImageName,
  resolveImage,
} from "./rules";

export interface ImageStoreOptions {
  records: RecordStore<ImageRecord>;
  /** Holds blobs/ and tmp/. */
  dir: string;
  /** Read on every pull, so an edited rules file takes effect without a restart. */
  rules: () => ImageRule[];
  logger: Logger;
  /** How often a running download logs its progress. */
  progressIntervalMs?: number;
  /** Largest download in bytes; a bigger one is refused and removed (default 64 GiB). */
  maxBytes?: number;
  /** A download that sends nothing (headers or body) for this long is given up on. */
  stallTimeoutMs?: number;
}

export const DEFAULT_MAX_IMAGE_BYTES = 64 * 2 ** 30;

export interface ImageFsUsage {
  mountpoint: string;
  usedBytes: number;
  inodesUsed: number;
}

/** The CRI image id of a record: `sha256:<hex>`. */
export function imageId(record: ImageRecord): string {
  return `sha256:${record.id}`;
}

/** The digests the image was pulled by, and one for each repository it has a tag in. */
export function repoDigests(record: ImageRecord): string[] {
  const fromTags = record.repoTags.map(
    (t) => `${normalizeImageName(t).repository}@sha256:${record.id}`,
  );
  return [...new Set([...(record.repoDigests ?? []), ...fromTags])];
}

const HEX64_RE = /^(sha256:)?([0-9a-f]{64})$/;
const SHORT_ID_RE = /^(sha256:)?([0-9a-f]{12,63})$/;

export class ImageStore {
  private readonly records: RecordStore<ImageRecord>;
  private readonly blobDir: string;
  private readonly tmpDir: string;
  private readonly rules: () => ImageRule[];
  private readonly logger: Logger;
  private readonly progressIntervalMs: number;
  private readonly maxBytes: number;
  private readonly stallTimeoutMs: number;
  /** One pull per name at a time; a second caller waits for the first. */
  private readonly pulling = new Map<string, Promise<ImageRecord>>();

  private constructor(options: ImageStoreOptions) {
    this.records = options.records;
    this.blobDir = path.join(options.dir, "blobs");
    this.tmpDir = path.join(options.dir, "tmp");
    this.rules = options.rules;
    this.logger = options.logger;
    this.progressIntervalMs = options.progressIntervalMs ?? 2000;
    this.maxBytes = options.maxBytes ?? DEFAULT_MAX_IMAGE_BYTES;
    this.stallTimeoutMs = options.stallTimeoutMs ?? 60_000;
  }

  /** Opens the store and removes what an interrupted pull or removal left behind. */
  static async open(options: ImageStoreOptions): Promise<ImageStore> {
    const store = new ImageStore(options);
    await fs.promises.rm(store.tmpDir, { recursive: true, force: true });
    await fs.promises.mkdir(store.tmpDir, { recursive: true, mode: 0o700 });
    await fs.promises.mkdir(store.blobDir, { recursive: true, mode: 0o700 });
    const blobs = new Set(await fs.promises.readdir(store.blobDir));
    for (const record of store.records.list()) {
      if (!blobs.has(record.id)) {
        store.logger.warn(
          { image: imageId(record) },
          "image record without its disk file: removed",
        );
        await store.records.delete(record.id);
      }
    }
    for (const blob of blobs) {
      if (!store.records.has(blob)) {
        store.logger.warn({ blob }, "disk file without an image record: removed");
        await fs.promises.rm(path.join(store.blobDir, blob), { force: true });
      }
    }
    return store;
  }

  list(): ImageRecord[] {
    return this.records.list();
  }

  /** By id (`sha256:<hex>`, the hex, or a unique prefix of 12+), tag, or `name@sha256:<hex>`. */
  find(ref: string): ImageRecord | undefined {
    const full = HEX64_RE.exec(ref);
    if (full) return this.records.get(full[2]);
    let name: ReturnType<typeof normalizeImageName> | undefined;
    try {
      name = normalizeImageName(ref);
    } catch {
      return undefined;
    }
    if (name.sha256) return this.records.get(name.sha256);
    const tag = name.tag;
    const tagged =
      tag === undefined ? undefined : this.records.list().find((r) => r.repoTags.includes(tag));
    if (tagged) return tagged;
    const short = SHORT_ID_RE.exec(ref);
    if (short) {
      const matches = this.records.list().filter((r) => r.id.startsWith(short[2]));
      if (matches.length === 1) return matches[0];
    }
    return undefined;
  }

  blobPath(record: ImageRecord): string {
    return path.join(this.blobDir, record.id);
  }

  /**
   * Checks a stored disk as a pull does, before QEMU opens it: the store may hold images
   * pulled before a check existed (a qcow2 naming a host file, say). Throws DiskImageError.
   */
  async verify(record: ImageRecord): Promise<void> {
    const file = await fs.promises.open(this.blobPath(record), "r");
    try {
      const header = Buffer.alloc(HEADER_BYTES);
      const { bytesRead } = await file.read(header, 0, HEADER_BYTES, 0);
      const format = detectDiskFormat(header.subarray(0, bytesRead));
      if (format !== record.format) {
        throw new NotADiskImageError(`stored as ${record.format}, but its header says ${format}`);
      }
    } finally {
      await file.close();
    }
  }

  async pull(name: string): Promise<ImageRecord> {
    const key = imageReference(normalizeImageNameOrThrow(name));
    const running = this.pulling.get(key);
    if (running) return running;
    const pull = this.pullOnce(name).finally(() => this.pulling.delete(key));
    this.pulling.set(key, pull);
    return pull;
  }

  /** Removes the image; an unknown one is not an error (kubelet retries). */
  async remove(record: ImageRecord): Promise<void> {
    // The record goes first: a crash after it leaves an orphan blob, which open() removes.
    await this.records.delete(record.id);
    await fs.promises.rm(this.blobPath(record), { force: true });
    this.logger.info({ image: imageId(record), tags: record.repoTags }, "image removed");
  }

  async fsUsage(): Promise<ImageFsUsage> {
    let usedBytes = 0;
    let inodesUsed = 0;
    for (const name of await fs.promises.readdir(this.blobDir)) {
      const st = await fs.promises.stat(path.join(this.blobDir, name)).catch(() => undefined);
      if (!st) continue;
      usedBytes += st.blocks * 512;
      inodesUsed += 1;
    }
    return { mountpoint: this.blobDir, usedBytes, inodesUsed };
  }

  private async pullOnce(name: string): Promise<ImageRecord> {
    const wanted = normalizeImageName(name); // pull() has checked it
    let rules: ImageRule[];
    try {
      rules = this.rules();
    } catch (error) {
      throw new CriError("FAILED_PRECONDITION", `PullImage ${name}: ${errorMessage(error)}`, {
        cause: error,
      });
    }
    let resolved: ReturnType<typeof resolveImage>;
    try {
      resolved = resolveImage(rules, name);
    } catch (error) {
      throw new CriError("INVALID_ARGUMENT", `PullImage ${name}: ${errorMessage(error)}`, {
        cause: error,
      });
    }
    if (!resolved) {
      throw new CriError(
        "NOT_FOUND",
        `PullImage ${name}: no image rule matches ${imageReference(wanted)}`,
      );
    }
    const log = this.logger.child({ image: imageReference(wanted), url: resolved.url });
    const known = resolved.sha256 ? this.records.get(resolved.sha256) : undefined;
    if (known) {
      log.info({ imageId: imageId(known) }, "image already present");
      return this.name(known, wanted, resolved.url);
    }
    log.info("pulling image");
    const download = await this.download(name, resolved.url, log);
    try {
      if (resolved.sha256 && download.sha256 !== resolved.sha256) {
        throw new CriError(
          "INVALID_ARGUMENT",
          `PullImage ${name}: ${resolved.url} has sha256:${download.sha256}, expected sha256:${resolved.sha256}; nothing kept`,
        );
      }
      const blob = path.join(this.blobDir, download.sha256);
      await fs.promises.rename(download.file, blob);
      await syncDir(this.blobDir);
    } finally {
      await fs.promises.rm(download.file, { force: true });
    }
    const existing = this.records.get(download.sha256);
    const record: ImageRecord = existing ?? {
      id: download.sha256,
      size: download.size,
      format: download.format,
      repoTags: [],
      source: resolved.url,
      pulledAt: new Date().toISOString(),
    };
    const tagged = await this.name(record, wanted, resolved.url);
    log.info(
      { imageId: imageId(tagged), size: download.size, format: download.format },
      "image pulled",
    );
    return tagged;
  }

  /**
   * Records the name `record` was pulled by: a tag, taken from whichever image had it
   * before; a digest, as a repo digest (a digest names one image, so nothing is taken).
   */
  private async name(record: ImageRecord, name: ImageName, source: string): Promise<ImageRecord> {
    const tag = name.tag;
    if (tag !== undefined) {
      for (const other of this.records.list()) {
        if (other.id !== record.id && other.repoTags.includes(tag)) {
          await this.records.put({ ...other, repoTags: other.repoTags.filter((t) => t !== tag) });
        }
      }
    }
    const digests = record.repoDigests ?? [];
    const digest = name.sha256 ? `${name.repository}@sha256:${name.sha256}` : undefined;
    const updated: ImageRecord = {
      ...record,
      repoTags:
        tag === undefined || record.repoTags.includes(tag)
          ? record.repoTags
          : [...record.repoTags, tag],
      ...(digest && !digests.includes(digest) ? { repoDigests: [...digests, digest] } : {}),
      source,
    };
    await this.records.put(updated);
    return updated;
  }

  private async download(
    name: string,
    url: string,
    log: Logger,
  ): Promise<{ file: string; sha256: string; size: number; format: ImageRecord["format"] }> {
    const file = path.join(this.tmpDir, `${crypto.randomBytes(8).toString("hex")}.part`);
    const abort = new AbortController();
    const fail = (
      code: "UNAVAILABLE" | "NOT_FOUND" | "INVALID_ARGUMENT",
      what: string,
      cause?: unknown,
    ) => new CriError(code, `PullImage ${name}: GET ${url}: ${what}; nothing kept`, { cause });
    // A server that stops sending, before its headers or mid-body, is given up on.
    let stalled = false;
    let watchdog: NodeJS.Timeout | undefined;
    const heard = (): void => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        stalled = true;
        abort.abort();
      }, this.stallTimeoutMs);
    };
    const stallMessage = () => `no data for ${this.stallTimeoutMs} ms: given up`;
    heard();
    try {
      let response: Response;
      try {
        // identity: fetch would otherwise ask for gzip and inflate it, unbounded, to disk.
        response = await fetch(url, {
          signal: abort.signal,
          headers: { "accept-encoding": "identity" },
        });
      } catch (error) {
        throw fail("UNAVAILABLE", stalled ? stallMessage() : describeFetchError(error), error);
      }
      heard();
      /** Drops the response unread; the error to throw. */
      const refuse = async (
        code: "UNAVAILABLE" | "NOT_FOUND" | "INVALID_ARGUMENT",
        what: string,
      ): Promise<CriError> => {
        await response.body?.cancel().catch(() => {});
        abort.abort();
        return fail(code, what);
      };
      if (!response.ok || !response.body) {
        throw await refuse(
          response.status === 404 ? "NOT_FOUND" : "UNAVAILABLE",
          `HTTP ${response.status} ${response.statusText}`,
        );
      }
      const encoding = response.headers.get("content-encoding")?.trim().toLowerCase();
      if (encoding && encoding !== "identity") {
        throw await refuse(
          "INVALID_ARGUMENT",
          `Content-Encoding ${JSON.stringify(encoding)}: vmlet takes disk images unencoded`,
        );
      }
      const total = Number(response.headers.get("content-length")) || undefined;
      if (total !== undefined && total > this.maxBytes) {
        throw await refuse(
          "INVALID_ARGUMENT",
          `${total} bytes (Content-Length) is more than the ${this.maxBytes}-byte image limit`,
        );
      }
      const hash = crypto.createHash("sha256");
      const handle = await fs.promises.open(file, "wx", 0o600);
      let header = Buffer.alloc(0);
      let format: ImageRecord["format"] | undefined;
      let size = 0;
      let lastLog = Date.now();
      try {
        try {
          for await (const chunk of response.body) {
            heard();
            const bytes = Buffer.from(chunk as Uint8Array);
            if (format === undefined && header.length < HEADER_BYTES) {
              header = Buffer.concat([header, bytes.subarray(0, HEADER_BYTES - header.length)]);
              // Refuse early: an error page or a tarball is known after the first 4 KiB.
              if (header.length >= HEADER_BYTES) format = detectDiskFormat(header);
            }
            size += bytes.length;
            if (size > this.maxBytes) throw new ImageTooLargeError(this.maxBytes);
            hash.update(bytes);
            await handle.write(bytes);
            if (Date.now() - lastLog >= this.progressIntervalMs) {
              lastLog = Date.now();
              log.info(
                {
                  bytes: size,
                  total,
                  percent: total ? Math.floor((size * 100) / total) : undefined,
                },
                "pull progress",
              );
            }
          }
        } catch (error) {
          abort.abort();
          if (error instanceof DiskImageError || error instanceof ImageTooLargeError)
            throw fail("INVALID_ARGUMENT", error.message, error);
          throw fail(
            "UNAVAILABLE",
            `download failed after ${size} bytes: ${stalled ? stallMessage() : describeFetchError(error)}`,
            error,
          );
        }
        if (total !== undefined && size !== total) {
          throw fail("UNAVAILABLE", `download ended after ${size} of ${total} bytes`);
        }
        try {
          format ??= detectDiskFormat(header);
        } catch (error) {
          throw fail("INVALID_ARGUMENT", errorMessage(error), error);
        }
        await handle.sync();
      } catch (error) {
        await handle.close();
        await fs.promises.rm(file, { force: true });
        throw error;
      }
      await handle.close();
      log.info({ bytes: size, total }, "download complete");
      return { file, sha256: hash.digest("hex"), size, format };
    } finally {
      clearTimeout(watchdog);
    }
  }
}

class ImageTooLargeError extends Error {
  constructor(limit: number) {
    super(`more than the ${limit}-byte image limit; download stopped`);
    this.name = "ImageTooLargeError";
  }
}

function normalizeImageNameOrThrow(name: string): ReturnType<typeof normalizeImageName> {
  try {
    return normalizeImageName(name);
  } catch (error) {
    if (error instanceof ImageRulesError)
      throw new CriError("INVALID_ARGUMENT", `PullImage: ${error.message}`);
    throw error;
  }
}

/** fetch hides the socket error in `cause`. */
function describeFetchError(error: unknown): string {
  const cause =
    error instanceof Error
      ? (error.cause as { code?: string; message?: string } | undefined)
      : undefined;
  const base = errorMessage(error);
  if (cause?.code || cause?.message)
    return `${base} (${cause.code ?? ""}${cause.code && cause.message ? " " : ""}${cause.message ?? ""})`;
  return base;
}
