// One kind of record (sandboxes, containers, images), one JSON file each, kept in memory
// and written through atomically. The file is the truth after a restart.
import fs from "node:fs";
import path from "node:path";
import { syncDir, TEMP_SUFFIX, writeFileAtomic } from "../../util/atomic-file";

export interface StoredRecord {
  id: string;
}

export class StoreError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StoreError";
  }
}

/** Ids name files: nothing that could climb out of the directory. */
const ID_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

export class RecordStore<T extends StoredRecord> {
  private readonly records = new Map<string, T>();
  /** Files that could not be read on open, with why; kept on disk for a human to look at. */
  readonly unreadable: { file: string; error: string }[] = [];

  private constructor(
    readonly kind: string,
    readonly dir: string,
  ) {}

  static async open<T extends StoredRecord>(kind: string, dir: string): Promise<RecordStore<T>> {
    const store = new RecordStore<T>(kind, dir);
    await fs.promises.mkdir(dir, { recursive: true, mode: 0o700 });
    for (const name of (await fs.promises.readdir(dir)).sort()) {
      const file = path.join(dir, name);
      if (name.endsWith(TEMP_SUFFIX)) {
        await fs.promises.rm(file, { force: true });
        continue;
      }
      if (!name.endsWith(".json")) continue;
      try {
        const record = JSON.parse(await fs.promises.readFile(file, "utf8")) as T;
        if (record.id !== name.slice(0, -".json".length)) throw new Error("id does not match");
        store.records.set(record.id, record);
      } catch (error) {
        store.unreadable.push({
          file,
          error: error instanceof Error ? error.message : String(error),
        });
      }
    }
    return store;
  }

  /** A copy: change it and `put` it back. */
  get(id: string): T | undefined {
    const record = this.records.get(id);
    return record === undefined ? undefined : structuredClone(record);
  }

  list(): T[] {
    return [...this.records.values()].map((r) => structuredClone(r));
  }

  has(id: string): boolean {
    return this.records.has(id);
  }

  /** Writes the record to disk, then makes it visible. */
  async put(record: T): Promise<void> {
    if (!ID_RE.test(record.id))
      throw new StoreError(`${this.kind} ${JSON.stringify(record.id)}: invalid id`);
    try {
      await writeFileAtomic(this.file(record.id), `${JSON.stringify(record, null, 2)}\n`);
    } catch (error) {
      throw new StoreError(`${this.kind} ${record.id}: write record: ${String(error)}`, {
        cause: error,
      });
    }
    this.records.set(record.id, structuredClone(record));
  }

  /** Removes the record; removing an absent one is not an error. */
  async delete(id: string): Promise<void> {
    if (!ID_RE.test(id)) return;
    try {
      await fs.promises.rm(this.file(id), { force: true });
      await syncDir(this.dir);
    } catch (error) {
      throw new StoreError(`${this.kind} ${id}: remove record: ${String(error)}`, { cause: error });
    }
    this.records.delete(id);
  }

  private file(id: string): string {
    return path.join(this.dir, `${id}.json`);
  }
}
