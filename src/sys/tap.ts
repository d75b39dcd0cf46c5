// Tap devices: an open("/dev/net/tun") plus TUNSETIFF, done inside the pod's netns so
// the device is created there.
import fs from "node:fs";
import * as libc from "./libc";
import { withNetns } from "./netns";

// linux/if_tun.h
const TUNSETIFF = 0x400454ca;
const TUNSETPERSIST = 0x400454cb;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
// linux/if.h: struct ifreq is IFNAMSIZ (16) bytes of name, then a 24-byte union.
const IFNAMSIZ = 16;
const IFREQ_SIZE = 40;

export interface Tap {
  /** Open file descriptor, close-on-exec; pass it to QEMU through spawn's stdio. */
  fd: number;
  name: string;
}

export interface OpenTapOptions {
  /** Device name; the kernel picks tapN when omitted. Reopens the device if it exists. */
  name?: string;
  /** Keep the device after the fd closes, so it can be reopened after a restart. */
  persist?: boolean;
}

/**
 * Opens (creating if needed) a tap in the netns at `nsPath` with IFF_TAP | IFF_NO_PI |
 * IFF_VNET_HDR. QEMU's `-netdev tap,fd=N` probes the vnet header itself.
 */
export function openTap(nsPath: string, options: OpenTapOptions = {}): Tap {
  const name = options.name ?? "";
  if (Buffer.byteLength(name) >= IFNAMSIZ) {
    throw new Error(`open tap ${name} in ${nsPath}: name longer than ${IFNAMSIZ - 1} bytes`);
  }
  return withNetns(nsPath, () => {
    const fd = fs.openSync("/dev/net/tun", fs.constants.O_RDWR);
    try {
      const ifreq = Buffer.alloc(IFREQ_SIZE);
      ifreq.write(name, 0, "utf8");
      ifreq.writeUInt16LE(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, IFNAMSIZ);
      libc.check(libc.ioctlPtr(fd, TUNSETIFF, ifreq), `TUNSETIFF ${name || "tap%d"} in ${nsPath}`);
      const actual = ifreq.toString("utf8", 0, IFNAMSIZ).replace(/\0.*$/s, "");
      if (options.persist) {
        libc.check(libc.ioctlInt(fd, TUNSETPERSIST, 1), `TUNSETPERSIST ${actual} in ${nsPath}`);
      }
      return { fd, name: actual };
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
  });
}
