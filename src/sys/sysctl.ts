// Writing a sysctl of one netns: /proc/sys is the netns of the thread that opens it.
import fs from "node:fs";
import { withNetns } from "./netns";

/** A key as sysctl(8) writes it, dots or slashes: net.ipv4.conf.br0.arp_ignore. */
function procPath(key: string): string {
  const parts = key.includes("/") ? key.split("/") : key.split(".");
  // A device name may hold a dot; sysctl(8) then wants slashes, and so do we.
  if (parts.some((p) => !/^[A-Za-z0-9_-][A-Za-z0-9_.-]*$/.test(p) || p === "..")) {
    throw new Error(`sysctl ${JSON.stringify(key)}: not a sysctl key`);
  }
  return `/proc/sys/${parts.join("/")}`;
}

/** Sets `key` to `value` inside the netns at `nsPath`. */
export function writeSysctl(nsPath: string, key: string, value: string): void {
  const file = procPath(key);
  try {
    withNetns(nsPath, () => fs.writeFileSync(file, value));
  } catch (error) {
    throw new Error(
      `sysctl ${key}=${value} in ${nsPath}: ${(error as NodeJS.ErrnoException).code ?? error}`,
      { cause: error },
    );
  }
}
