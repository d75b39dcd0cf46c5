// The persisted "container side network" of each pod: written before anything is
// created, completed as setUp goes, and read back by tearDown and recover().
import fs from "node:fs";
import path from "node:path";
import type { DhcpLease } from "../dhcp/server";
import type { PodInterface, PodNetworkRequest } from "./types";

export type PodPhase =
  /** The netns may exist and CNI ADD may have run; nothing was read yet. */
  | "creating"
  /** The interfaces were read off the netns; rewiring may be partial. */
  | "wiring"
  /** Rewired and served. */
  | "ready";

export interface PersistedInterface extends PodInterface {
  /** DHCP option 54, and the address renewals are unicast to. */
  serverId: string;
  /** Absent for a NIC without IPv4: nothing to serve. */
  lease?: DhcpLease;
}

export interface PodRecord {
  version: 1;
  request: PodNetworkRequest;
  netnsName: string;
  netnsPath: string;
  hostname: string;
  phase: PodPhase;
  interfaces: PersistedInterface[];
}

/** One JSON file per sandbox, replaced atomically (write, fsync, rename). */
export class PodStateStore {
  constructor(private readonly dir: string) {}

  private file(sandboxId: string): string {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(sandboxId)) {
      throw new Error(`sandbox id ${JSON.stringify(sandboxId)}: not a safe file name`);
    }
    return path.join(this.dir, `${sandboxId}.json`);
  }

  write(record: PodRecord): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const file = this.file(record.request.pod.sandboxId);
    const temp = `${file}.${process.pid}.tmp`;
    const fd = fs.openSync(temp, "w", 0o600);
    try {
      fs.writeSync(fd, `${JSON.stringify(record, null, 2)}\n`);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temp, file);
  }

  read(sandboxId: string): PodRecord | undefined {
    try {
      return JSON.parse(fs.readFileSync(this.file(sandboxId), "utf8")) as PodRecord;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new Error(`read pod network state ${sandboxId}: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  remove(sandboxId: string): void {
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
}
