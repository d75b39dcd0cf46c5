// Typed CNI errors. Each message names the network, the plugin and the pod, so that a
// line in kubelet's log says what failed where without a second lookup.

/** Where a CNI operation ran: enough to name it in an error. */
export interface CniErrorContext {
  command: string;
  network?: string;
  plugin?: string;
  pod?: string;
  ifname?: string;
}

function prefix(ctx: CniErrorContext): string {
  const parts = [`CNI ${ctx.command}`];
  if (ctx.pod) parts.push(`pod ${ctx.pod}`);
  if (ctx.network) parts.push(`network ${ctx.network}${ctx.ifname ? ` (${ctx.ifname})` : ""}`);
  if (ctx.plugin) parts.push(`plugin ${ctx.plugin}`);
  return parts.join(" ");
}

export class CniError extends Error {
  readonly context: CniErrorContext;
  constructor(ctx: CniErrorContext, message: string, options?: { cause?: unknown }) {
    super(`${prefix(ctx)}: ${message}`, options);
    this.name = new.target.name;
    this.context = ctx;
  }
}

/** A network configuration (file or list) that does not follow the spec. */
export class CniConfigError extends CniError {}

/** The plugin's executable is in none of the plugin directories. */
export class CniPluginNotFoundError extends CniError {
  readonly binDirs: string[];
  constructor(ctx: CniErrorContext, binDirs: string[], options?: { cause?: unknown }) {
    super(ctx, `executable not found in ${binDirs.join(":")}`, options);
    this.binDirs = binDirs;
  }
}

/** The plugin exited non-zero; code, msg and details come from its error JSON when it gave one. */
export class CniPluginError extends CniError {
  readonly code: number | undefined;
  readonly msg: string;
  readonly details: string | undefined;
  readonly exitCode: number | null;
  readonly stderr: string;
  constructor(
    ctx: CniErrorContext,
    fields: {
      code?: number;
      msg: string;
      details?: string;
      exitCode: number | null;
      stderr: string;
    },
    options?: { cause?: unknown },
  ) {
    const code = fields.code === undefined ? "" : ` (code ${fields.code})`;
    const details = fields.details ? `: ${fields.details}` : "";
    super(ctx, `${fields.msg}${code}${details}`, options);
    this.code = fields.code;
    this.msg = fields.msg;
    this.details = fields.details;
    this.exitCode = fields.exitCode;
    this.stderr = fields.stderr;
  }
}

/** The plugin succeeded but printed something that is not a valid result. */
export class CniInvalidResultError extends CniError {
  readonly output: string;
  constructor(ctx: CniErrorContext, reason: string, output: string, options?: { cause?: unknown }) {
    super(ctx, `invalid result: ${reason}`, options);
    this.output = output;
  }
}

/** The plugin ran past the time limit and was killed. */
export class CniTimeoutError extends CniError {
  readonly timeoutMs: number;
  readonly pid: number | undefined;
  constructor(ctx: CniErrorContext, timeoutMs: number, pid: number | undefined) {
    super(ctx, `no answer within ${timeoutMs} ms; killed pid ${pid}`);
    this.timeoutMs = timeoutMs;
    this.pid = pid;
  }
}
