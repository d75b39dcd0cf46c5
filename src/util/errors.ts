// What every layer says about a caught error: its message, and the errno name it carries.

/** The message of an Error, or the thrown value as text. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * The errno name in an error (EEXIST, ENOENT, ...): the one the netlink package puts in a
 * rejected request's message, or the `code` of a Node or libc error; else the message.
 */
export function errnoCode(error: unknown): string {
  const message = errorMessage(error);
  const rejected = /Request rejected: (\S+)/.exec(message)?.[1];
  if (rejected) return rejected;
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^E[A-Z0-9]+$/.test(code) ? code : message;
}
