// An IPv6 datagram socket (raw ICMPv6 or UDP) made inside a pod's netns, bound to one
// device there, watched on Node's event loop (sys/poller) and written with sendto(2). Not Node's dgram:
// dgram names a link-local sender by its interface, looked up in vmlet's own netns,
// where the pod's bridge index means nothing (ENXIO from uv_if_indextoiid, datagram lost).
import { bytesToIpv6, ipv6ToBytes } from "../util/ipv6";
import * as libc from "./libc";
import { withNetns } from "./netns";
import { poller } from "./poller";
import { HopLimitReader } from "./recvmsg";

/** struct sockaddr_in6, linux/in6.h: family, port, flowinfo, address, scope id. */
const SOCKADDR_IN6_SIZE = 28;
const MAX_MESSAGE = 1500;

/** `hopLimit`: the datagram's IPv6 hop limit, on sockets opened with `receiveHopLimit`. */
export type Socket6Handler = (
  message: Buffer,
  source: string,
  port: number,
  hopLimit?: number,
) => void;

export function sockaddrIn6(address: string, port: number, scopeId: number): Buffer {
  const sa = Buffer.alloc(SOCKADDR_IN6_SIZE);
  sa.writeUInt16LE(libc.AF_INET6, 0);
  sa.writeUInt16BE(port, 2);
  ipv6ToBytes(address).copy(sa, 8);
  sa.writeUInt32LE(scopeId, 24);
  return sa;
}

export function setIntOption(
  fd: number,
  level: number,
  name: number,
  value: number,
  label: string,
): void {
  const v = Buffer.alloc(4);
  v.writeInt32LE(value);
  libc.check(libc.setsockopt(fd, level, name, v, 4), label);
}

/** struct ipv6_mreq, linux/in6.h: the group, then the interface index. */
export function joinGroup(fd: number, group: string, ifindex: number, label: string): void {
  const mreq = Buffer.alloc(20);
  ipv6ToBytes(group).copy(mreq, 0);
  mreq.writeInt32LE(ifindex, 16);
  libc.check(
    libc.setsockopt(fd, libc.IPPROTO_IPV6, libc.IPV6_ADD_MEMBERSHIP, mreq, mreq.length),
    label,
  );
}

export interface Socket6Device {
  /** Device inside the netns (SO_BINDTODEVICE), and its index for scoped addresses. */
  device: string;
  ifindex: number;
}

export class Socket6 {
  private handler?: Socket6Handler;
  private closed = false;

  constructor(
    readonly fd: number,
    private readonly ifindex: number,
    readonly where: string,
    /** Reads with recvmsg(2) and the hop limit, where the socket asked for it. */
    private readonly hopLimits?: HopLimitReader,
  ) {}

  /**
   * Makes the socket in `nsPath` (type and protocol as for socket(2), non-blocking) and
   * binds it to the device; `configure` sets the rest. Closed again if any step fails.
   * With `receiveHopLimit`, each datagram's hop limit reaches the handler (IPV6_RECVHOPLIMIT).
   */
  static open(
    nsPath: string,
    dev: Socket6Device,
    kind: { type: number; protocol: number; label: string; receiveHopLimit?: boolean },
    configure: (fd: number, where: string) => void,
  ): Socket6 {
    const where = `${kind.label} on ${dev.device} in ${nsPath}`;
    const fd = withNetns(nsPath, () =>
      libc.check(
        libc.socket(
          libc.AF_INET6,
          kind.type | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC,
          kind.protocol,
        ),
        `socket for ${where}`,
      ),
    );
    try {
      const name = Buffer.from(`${dev.device}\0`);
      libc.check(
        libc.setsockopt(fd, libc.SOL_SOCKET, libc.SO_BINDTODEVICE, name, name.length),
        `SO_BINDTODEVICE for ${where}`,
      );
      if (kind.receiveHopLimit) {
        setIntOption(
          fd,
          libc.IPPROTO_IPV6,
          libc.IPV6_RECVHOPLIMIT,
          1,
          `IPV6_RECVHOPLIMIT for ${where}`,
        );
      }
      configure(fd, where);
    } catch (error) {
      libc.close(fd);
      throw error;
    }
    const reader = kind.receiveHopLimit ? new HopLimitReader(MAX_MESSAGE) : undefined;
    return new Socket6(fd, dev.ifindex, where, reader);
  }

  /** bind(2) to an address of the device (scoped to it); false while it is not usable. */
  tryBind(address: string, port = 0): boolean {
    const sa = sockaddrIn6(address, port, this.ifindex);
    if (libc.bind(this.fd, sa, sa.length) === 0) return true;
    const code = libc.errno();
    if (code === libc.EADDRNOTAVAIL) return false;
    throw new libc.SysCallError(`bind [${address}]:${port} for ${this.where}`, code);
  }

  onMessage(handler: Socket6Handler): void {
    this.handler = handler;
    poller.watch(this.fd, () => this.drain());
  }

  /** Sends one datagram to `address` (scoped to the device when link-local). */
  send(message: Buffer, address: string, port = 0): void {
    const sa = sockaddrIn6(address, port, this.ifindex);
    const sent = libc.sendto(this.fd, message, message.length, 0, sa, sa.length);
    if (sent < 0) throw new libc.SysCallError(`sendto ${address} for ${this.where}`, libc.errno());
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.handler) poller.unwatch(this.fd, () => libc.close(this.fd));
    else libc.close(this.fd);
  }

  private drain(): void {
    if (this.hopLimits) {
      while (!this.closed) {
        const d = this.hopLimits.receive(this.fd);
        if (!d) return; // EAGAIN: drained; any other error shows again on the next datagram
        this.handler?.(d.message, d.source, d.port, d.hopLimit);
      }
      return;
    }
    const buf = Buffer.alloc(MAX_MESSAGE);
    const sa = Buffer.alloc(SOCKADDR_IN6_SIZE);
    const length = Buffer.alloc(4);
    while (!this.closed) {
      length.writeUInt32LE(SOCKADDR_IN6_SIZE);
      const n = Number(libc.recvfrom(this.fd, buf, buf.length, libc.MSG_DONTWAIT, sa, length));
      if (n < 0) return; // EAGAIN: drained; any other error shows again on the next datagram
      this.handler?.(Buffer.from(buf.subarray(0, n)), bytesToIpv6(sa, 8), sa.readUInt16BE(2));
    }
  }
}
