// A logger that drops everything: the default where a caller gives none.

/** Every level the components' small log interfaces (DhcpLog, VmLog) ask for. */
export const silentLog = {
  debug(): void {},
  info(): void {},
  warn(): void {},
  error(): void {},
};
