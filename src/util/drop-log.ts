// Counting a dropped packet by reason, and saying so without a flood becoming a log flood:
// the first drop of each reason is a warning, the rest are debug lines.
export interface DropLog {
  warn(fields: object, message: string): void;
  debug(fields: object, message: string): void;
}

export function countDrop<R extends string>(
  dropped: Partial<Record<R, number>>,
  reason: R,
  log: DropLog,
  fields: object,
  message: string,
): void {
  const n = (dropped[reason] ?? 0) + 1;
  dropped[reason] = n;
  if (n === 1) log.warn({ ...fields, reason }, message);
  else log.debug({ ...fields, reason }, message);
}
