// Running one plugin executable: find it in the plugin dirs, spawn it with the CNI
// environment and the config on stdin, enforce the time limit, and classify failure.
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import {
  type CniErrorContext,
  CniPluginError,
  CniPluginNotFoundError,
  CniTimeoutError,
} from "./errors";

export type CniCommand = "ADD" | "DEL" | "CHECK" | "VERSION" | "STATUS" | "GC";

export interface PluginInvocation {
  command: CniCommand;
  containerId?: string;
  netns?: string;
  ifname?: string;
  args?: string;
  /** The JSON written to the plugin's stdin. */
  stdin: string;
  /**
   * Holds the config back until this resolves: the plugin starts meanwhile (a Go
   * plugin's runtime start is most of its time) but can act on nothing before it reads
   * its config. If it rejects, the plugin is killed unread and the call fails with it.
   */
  stdinAfter?: Promise<void>;
}

function lookUp(type: string, binDirs: string[]): string | undefined {
  for (const dir of binDirs) {
    const file = path.join(dir, type);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (fs.statSync(file).isFile()) return file;
    } catch {
      // not in this dir
    }
  }
  return undefined;
}

/** The executable for `type` in the first dir that has it, or a typed error. */
export function findPlugin(type: string, binDirs: string[], ctx: CniErrorContext): string {
  const file = lookUp(type, binDirs);
  if (file === undefined) throw new CniPluginNotFoundError(ctx, binDirs);
  return file;
}

/** Whether an executable for `type` is in one of the plugin dirs. */
export function pluginExists(type: string, binDirs: string[]): boolean {
  return lookUp(type, binDirs) !== undefined;
}

/** The environment a plugin sees: ours, plus the CNI variables for this call. */
export function pluginEnv(inv: PluginInvocation, binDirs: string[]): NodeJS.ProcessEnv {
  return {
    ...process.env,
    CNI_COMMAND: inv.command,
    CNI_CONTAINERID: inv.containerId ?? "",
    CNI_NETNS: inv.netns ?? "",
    CNI_IFNAME: inv.ifname ?? "",
    CNI_ARGS: inv.args ?? "",
    CNI_PATH: binDirs.join(path.delimiter),
  };
}

function pluginFailure(
  ctx: CniErrorContext,
  stdout: string,
  stderr: string,
  exitCode: number | null,
  signal: NodeJS.Signals | null,
): CniPluginError {
  try {
    const e = JSON.parse(stdout) as { code?: unknown; msg?: unknown; details?: unknown };
    if (typeof e.msg === "string" || typeof e.code === "number") {
      return new CniPluginError(ctx, {
        code: typeof e.code === "number" ? e.code : undefined,
        msg: typeof e.msg === "string" ? e.msg : "",
        details: typeof e.details === "string" && e.details !== "" ? e.details : undefined,
        exitCode,
        stderr,
      });
    }
  } catch {
    // not a CNI error object: report what it printed
  }
  const how = signal ? `killed by ${signal}` : `exited ${exitCode}`;
  const said = (stderr.trim() || stdout.trim()).slice(-500);
  return new CniPluginError(ctx, {
    msg: said ? `${how}: ${said}` : how,
    exitCode,
    stderr,
  });
}

/**
 * Runs the plugin at `file` and resolves with its stdout. Rejects with CniPluginError on
 * a non-zero exit and CniTimeoutError after `timeoutMs`, when it kills the plugin's
 * whole process group: a plugin that hangs is often waiting on its IPAM delegate, which
 * would otherwise go on and allocate an address after the rollback DEL released it.
 */
export function execPlugin(
  file: string,
  inv: PluginInvocation,
  binDirs: string[],
  timeoutMs: number,
  ctx: CniErrorContext,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, [], {
      env: pluginEnv(inv, binDirs),
      stdio: ["pipe", "pipe", "pipe"],
      // A process group of its own, so that a timeout kills its children too.
      detached: true,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let settled = false;
    const settle = (fn: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      fn();
    };
    const timer = setTimeout(() => {
      killGroup(child.pid);
      // Its own children may hold our pipes open; we stop waiting for them.
      child.stdout.destroy();
      child.stderr.destroy();
      settle(() => reject(new CniTimeoutError(ctx, timeoutMs, child.pid)));
    }, timeoutMs);
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    // A plugin that exits without reading stdin makes our write fail with EPIPE: harmless.
    child.stdin.on("error", () => {});
    child.on("error", (error: NodeJS.ErrnoException) => {
      settle(() =>
        reject(
          error.code === "ENOENT" || error.code === "EACCES"
            ? new CniPluginNotFoundError(ctx, [path.dirname(file)], { cause: error })
            : new CniPluginError(
                ctx,
                { msg: `spawn ${file}: ${error.message}`, exitCode: null, stderr: "" },
                { cause: error },
              ),
        ),
      );
    });
    child.on("close", (code, signal) => {
      settle(() => {
        const stdout = Buffer.concat(out).toString("utf8");
        const stderr = Buffer.concat(err).toString("utf8");
        if (code === 0) resolve(stdout);
        else reject(pluginFailure(ctx, stdout, stderr, code, signal));
      });
    });
    if (!inv.stdinAfter) {
      child.stdin.end(inv.stdin);
      return;
    }
    inv.stdinAfter.then(
      () => {
        if (!settled) child.stdin.end(inv.stdin);
      },
      (error: unknown) => {
        if (settled) return;
        killGroup(child.pid);
        settle(() => reject(error));
      },
    );
  });
}

function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, "SIGKILL");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error;
  }
}
