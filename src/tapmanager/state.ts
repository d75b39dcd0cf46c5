// The persisted "container side network" of each pod: written before anything is
// created, completed as setUp goes, and read back by tearDown and recover(). Each NIC is
// kept as the guest's view (guest-network.ts); its DHCP lease is derived from it.
import fs from "node:fs";
import path from "node:path";
import { replaceFileUnflushed } from "../sys/replace-file";
import { removeStaleTemps, writeFileAtomic } from "../util/atomic-file";
import type { IpAddress, PodInterface, PodNetworkRequest } from "./types";

export type PodPhase =
  /** The netns may exist and CNI ADD may have run; nothing was read yet. */
  | "creating"
  /** Rewired once, but not serving now: re-attaching it after a restart failed. */
  | "wiring"
  /** Rewired and served. */
  | "ready";

export interface PersistedInterface extends PodInterface {
  /** DHCP option 54, and the address renewals are unicast to. */
  serverId: string;
  /** The IPv4 address DHCP serves, with the mask the netns routes on-link; absent: none. */
  ipv4?: IpAddress;
}

/** Records before the view was persisted (version 1) kept the lease instead. */
export const RECORD_VERSION = 2;

export interface PodRecord {
  version: typeof RECORD_VERSION;
  request: PodNetworkRequest;
  netnsName: string;
  netnsPath: string;
  hostname: string;
  phase: PodPhase;
  interfaces: PersistedInterface[];
}

/** A record file that cannot be read; the store has renamed it to `setAsideAs`. */
export interface UnreadableRecord {
  sandboxId: string;
  file: string;
  setAsideAs: string;
  error: string;
}

/**
 * One JSON file per sandbox, replaced durably (src/util/atomic-file). A file that cannot
 * be parsed is set aside under another name, so that one bad record neither stops the
 * others' recovery nor fails every later call for its pod.
 */
export class PodStateStore {
  constructor(
    private readonly dir: string,
    private readonly onUnreadable: (record: UnreadableRecord) => void = () => {},
  ) {}

  private file(sandboxId: string): string {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(sandboxId)) {
      throw new Error(`sandbox id ${JSON.stringify(sandboxId)}: not a safe file name`);
    }
    return path.join(this.dir, `${sandboxId}.json`);
  }

  /** What opening the store does: temp files of writes a crash cut short are removed. */
  async open(): Promise<void> {
    await removeStaleTemps(this.dir);
  }

  async write(record: PodRecord): Promise<void> {
    await fs.promises.mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(
      this.file(record.request.pod.sandboxId),
      `${JSON.stringify(record, null, 2)}\n`,
    );
  }

  /**
   * Records a step of setUp ("creating", "ready"), atomically but without fsync
   * and without ext4's flush on a replacing rename (sys/replace-file). A crash of vmlet
   * keeps it (the page cache outlives the process), so recovery is as with write(). A
   * power cut may lose it, leave an older one, or leave it empty, which read() sets aside
   * as unreadable: after a reboot every netns is gone (they live on /run), and recover()
   * tears down any pod whose netns is gone, whatever its phase; a pod with no record left
   * is freed by CNI garbage collection from the CNI client's durable record of its
   * attachment.
   */
  writeStep(record: PodRecord): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    replaceFileUnflushed(this.file(record.request.pod.sandboxId), `${JSON.stringify(record)}\n`);
  }

  read(sandboxId: string): PodRecord | undefined {
    const file = this.file(sandboxId);
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new Error(`read pod network state ${file}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    try {
      return checkRecord(JSON.parse(text), sandboxId);
    } catch (error) {
      this.setAside(sandboxId, file, (error as Error).message);
      return undefined;
    }
  }

  /**
   * Removes the record, without syncing the directory: a record a power cut brings back
   * names a netns that the reboot took, so recover() tears it down again (CNI DEL is
   * idempotent) and removes it.
   */
  async remove(sandboxId: string): Promise<void> {
    fs.rmSync(this.file(sandboxId), { force: true });
  }

  list(): string[] {
    try {
      return fs
        .readdirSync(this.dir)
        .filter((f) => f.endsWith(".json"))
        .map((f) => f.slice(0, -".json".length))
        .sort();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw error;
    }
  }

  private setAside(sandboxId: string, file: string, error: string): void {
    const setAsideAs = `${file}.unreadable-${Date.now()}`;
    try {
      fs.renameSync(file, setAsideAs);
    } catch (renameError) {
      if ((renameError as NodeJS.ErrnoException).code === "ENOENT") return; // raced a remove
      throw new Error(`set aside unreadable pod network state ${file}: ${String(renameError)}`, {
        cause: renameError,
      });
    }
    this.onUnreadable({ sandboxId, file, setAsideAs, error });
  }
}

/** A NIC as version 1 wrote it: the served address only in its lease. */
interface PersistedInterfaceV1 extends Omit<PersistedInterface, "ipv4"> {
  lease?: { ip: string; prefixLength: number };
}

/** A version 1 record in today's shape: the served address moves from the lease to the view. */
function upgradeV1(record: Omit<PodRecord, "version"> & { version: number }): PodRecord {
  const interfaces = (record.interfaces as PersistedInterfaceV1[]).map(({ lease, ...nic }) => ({
    ...nic,
    ...(lease
      ? { ipv4: { family: 4 as const, address: lease.ip, prefixLength: lease.prefixLength } }
      : {}),
  }));
  return { ...record, version: RECORD_VERSION, interfaces };
}

/** Enough of the shape for the code that reads it not to throw; older versions upgraded. */
function checkRecord(value: unknown, sandboxId: string): PodRecord {
  const record = value as (Omit<Partial<PodRecord>, "version"> & { version?: number }) | null;
  if (typeof record !== "object" || record === null) throw new Error("not a JSON object");
  if (record.version !== 1 && record.version !== RECORD_VERSION) {
    throw new Error(`version ${String(record.version)}, not 1 or ${RECORD_VERSION}`);
  }
  if (record.request?.pod?.sandboxId !== sandboxId) throw new Error("sandbox id does not match");
  if (typeof record.netnsName !== "string" || typeof record.netnsPath !== "string")
    throw new Error("no netns");
  if (!Array.isArray(record.interfaces)) throw new Error("no interfaces");
  const whole = record as Omit<PodRecord, "version"> & { version: number };
  return whole.version === 1 ? upgradeV1(whole) : (whole as PodRecord);
}
