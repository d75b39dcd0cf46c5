// Tap devices: an open("/dev/net/tun") plus TUNSETIFF, done inside the pod's netns so
// the device is created there.
import fs from "node:fs";
import koffi from "koffi";
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
// linux/sockios.h, linux/ethtool.h
const SIOCETHTOOL = 0x8946;
const ETHTOOL_GLINK = 0x0000000a;
/** struct ifreq with ifr_data (a pointer into the union), for SIOCETHTOOL. */
const IfreqData = koffi.struct("vmlet_ifreq_data", {
  name: koffi.array("char", IFNAMSIZ, "String"),
  data: "void *",
  pad: koffi.array("uint8", IFREQ_SIZE - IFNAMSIZ - 8),
});

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
      } else {
        syncLinkState(actual, nsPath);
      }
      return { fd, name: actual };
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
  });
}

/**
 * Has the kernel act on the carrier the open just raised, now. Until its link watch runs,
 * an up tap keeps the no-op qdisc (every frame to the guest is dropped) and its bridge
 * port stays disabled; the link watch may put that off for up to a second when the tap
 * had an event pending (the close of the fd that created it). ETHTOOL_GLINK runs it for
 * this device synchronously (linkwatch_sync_dev in ethtool_op_get_link), so the guest's
 * first DISCOVER is answered. Called inside the netns.
 */
function syncLinkState(name: string, nsPath: string): void {
  const sock = libc.check(
    libc.socket(libc.AF_INET, libc.SOCK_DGRAM | libc.SOCK_CLOEXEC, 0),
    `socket for ETHTOOL_GLINK ${name} in ${nsPath}`,
  );
  try {
    const value = Buffer.alloc(8); // struct ethtool_value { u32 cmd; u32 data; }
    value.writeUInt32LE(ETHTOOL_GLINK, 0);
    const ifreq = Buffer.alloc(koffi.sizeof(IfreqData));
    koffi.encode(ifreq, IfreqData, {
      name,
      data: value,
      pad: new Array<number>(IFREQ_SIZE - IFNAMSIZ - 8).fill(0),
    });
    libc.check(libc.ioctlPtr(sock, SIOCETHTOOL, ifreq), `ETHTOOL_GLINK ${name} in ${nsPath}`);
  } finally {
    libc.close(sock);
  }
}
