// Which runtime owns each sandbox and container id, recorded when the id is made and
// kept on disk, so that every later call on the id, after any restart of vmlet, reaches
// the runtime that made it. Ids are not rewritten: kubelet and crictl show them as made.
import fs from "node:fs";
import path from "node:path";
import { writeFileAtomic } from "../../util/atomic-file";

export type Owner = "vmlet" | "containerd";

export interface OwnerEntry {
  owner: Owner;
  kind: "sandbox" | "container";
  /** A container's sandbox: removing the sandbox forgets its containers. */
  sandbox?: string;
  /** A sandbox's RuntimeClass handler, as kubelet sent it. */
  handler?: string;
}

export class OwnerMapError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "OwnerMapError";
  }
}

const FILE_VERSION = 1;

export class OwnerMap {
  private readonly entries: Map<string, OwnerEntry>;
  /** Writes run one after another, each of the whole map as it is then. */
  private writing: Promise<void> = Promise.resolve();

  private constructor(
    private readonly file: string,
    entries: Map<string, OwnerEntry>,
  ) {
    this.entries = entries;
  }

  /** Reads the map at `file`; none yet is an empty map. A file that cannot be read is an error. */
  static async open(file: string): Promise<OwnerMap> {
    await fs.promises.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    let text: string;
    try {
      text = await fs.promises.readFile(file, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return new OwnerMap(file, new Map());
      throw new OwnerMapError(`owner map ${file}: ${String(error)}`, { cause: error });
    }
    return new OwnerMap(file, parseOwners(text, file));
  }

  get(id: string): OwnerEntry | undefined {
    return this.entries.get(id);
  }

  ids(owner: Owner): string[] {
    return [...this.entries].filter(([, e]) => e.owner === owner).map(([id]) => id);
  }

  /** Records `id`, durably, before the caller answers with it. */
  async set(id: string, entry: OwnerEntry): Promise<void> {
    const had = this.entries.get(id);
    if (had && had.owner === entry.owner && had.kind === entry.kind) return;
    this.entries.set(id, entry);
    await this.flush();
  }

  /** Forgets a removed container, or a removed sandbox with its containers. */
  async forget(id: string): Promise<void> {
    let changed = this.entries.delete(id);
    for (const [other, e] of this.entries) {
      if (e.sandbox === id) changed = this.entries.delete(other) || changed;
    }
    if (changed) await this.flush();
  }

  private flush(): Promise<void> {
    const next = this.writing.then(() =>
      writeFileAtomic(
        this.file,
        `${JSON.stringify({ version: FILE_VERSION, ids: Object.fromEntries(this.entries) })}\n`,
      ),
    );
    this.writing = next.catch(() => undefined);
    return next;
  }
}

function parseOwners(text: string, file: string): Map<string, OwnerEntry> {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new OwnerMapError(`owner map ${file}: not JSON: ${String(error)}`, { cause: error });
  }
  const ids = (raw as { version?: unknown; ids?: unknown } | null)?.ids;
  if ((raw as { version?: unknown }).version !== FILE_VERSION || typeof ids !== "object" || !ids)
    throw new OwnerMapError(`owner map ${file}: want {"version":${FILE_VERSION},"ids":{...}}`);
  const out = new Map<string, OwnerEntry>();
  for (const [id, value] of Object.entries(ids)) {
    const e = value as Partial<OwnerEntry> | null;
    if (
      !e ||
      (e.owner !== "vmlet" && e.owner !== "containerd") ||
      (e.kind !== "sandbox" && e.kind !== "container")
    )
      throw new OwnerMapError(`owner map ${file}: entry ${id}: want owner and kind`);
    out.set(id, {
      owner: e.owner,
      kind: e.kind,
      ...(typeof e.sandbox === "string" ? { sandbox: e.sandbox } : {}),
      ...(typeof e.handler === "string" ? { handler: e.handler } : {}),
    });
  }
  return out;
}
