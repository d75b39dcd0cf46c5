// A DHCP client (or any tool) started in a netns by a test, with its output kept and
// time-stamped, stopped by its own pid.
import { type ChildProcess, spawn } from "node:child_process";

export class ClientProcess {
  output = "";
  private readonly started = Date.now();
  private readonly child: ChildProcess;
  constructor(netns: string, argv: string[]) {
    // unshare --uts: a client's hostname hook must not rename this machine.
    this.child = spawn("ip", ["netns", "exec", netns, "unshare", "--uts", ...argv], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const keep = (d: Buffer) => {
      const at = ((Date.now() - this.started) / 1000).toFixed(1);
      this.output += d.toString().replace(/^(?=.)/gm, `[${at}] `);
    };
    this.child.stdout?.on("data", keep);
    this.child.stderr?.on("data", keep);
  }
  count(re: RegExp): number {
    return this.output.match(new RegExp(re.source, "g"))?.length ?? 0;
  }
  signal(sig: NodeJS.Signals): void {
    if (this.child.pid !== undefined && this.child.exitCode === null)
      process.kill(this.child.pid, sig);
  }
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.pid === undefined) return;
    const exited = new Promise((r) => this.child.once("exit", r));
    process.kill(this.child.pid, "SIGTERM");
    const timer = setTimeout(() => this.signal("SIGKILL"), 3000);
    await exited;
    clearTimeout(timer);
  }
}

export async function waitFor<T>(
  what: string,
  ms: number,
  probe: () => T | undefined | false,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
