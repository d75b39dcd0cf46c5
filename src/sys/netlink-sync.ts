// A netlink socket whose requests complete inside the call, for rtnetlink. The kernel
// handles a request to NETLINK_ROUTE within sendmsg() and queues its reply and ACK on
// the socket before sendmsg() returns (netlink_rcv_skb); a dump queues its next part
// within each recvmsg(). So a request is a send and a few non-blocking reads, with no
// turn of the event loop: setUp's ~40 requests cost their kernel time and little more.
// It stands in for the netlink package's NetlinkSocket under its RtNetlinkSocket, which
// keeps formatting and parsing the messages.
import os from "node:os";
import util from "node:util";
import {
  formatMessage,
  type NetlinkMessage,
  parseError,
  parseMessages,
} from "netlink/dist/structs";
import * as libc from "./libc";
import {
  IFNAMSIZ,
  IFREQ_SIZE,
  NETLINK_GET_STRICT_CHK,
  SIOCGIFHWADDR,
  SIOCGIFINDEX,
  SOL_NETLINK,
} from "./uapi";

// linux/netlink.h
const AF_NETLINK = 16;
const NETLINK_ROUTE = 0;
const NLM_F_REQUEST = 0x1;
const NLM_F_ACK = 0x4;
const NLMSG_ERROR = 0x2;
const NLMSG_DONE = 0x3;
const NLM_F_DUMP = 0x300;
// asm-generic/errno-base.h
const EAGAIN = 11;
const EINTR = 4;
// poll.h
const POLLIN = 0x1;
/**
 * The kernel answers inside the send; should a reply ever be late, the read waits this
 * long (blocking the thread) before the request fails.
 */
const LATE_REPLY_MS = 200;
/** A dump's parts are at most 32 KiB (netlink_dump's allocation cap); room for two. */
const RECEIVE_BUFFER_BYTES = 64 * 1024;

/** One receive buffer for every socket: a read is copied out before the next one. */
const receiveBuffer = Buffer.alloc(RECEIVE_BUFFER_BYTES);

export interface SyncRequestOptions {
  flags?: number;
  /** Unused: kept for the netlink package's call shape (the reply is in by return). */
  timeout?: number;
}

/** The error the netlink package gives for a refused request, so errnoCode reads it. */
function rejected(errno: number): Error {
  let code = String(errno);
  try {
    code = util.getSystemErrorName(errno);
  } catch {}
  return new Error(`Request rejected: ${code}`);
}

export class SyncNetlinkSocket {
  private seq = 1;
  private closed = false;

  private constructor(private readonly fd: number) {}

  /** Opens a NETLINK_ROUTE socket in the calling thread's current netns. */
  static open(): SyncNetlinkSocket {
    const fd = libc.check(
      libc.socket(AF_NETLINK, libc.SOCK_RAW | libc.SOCK_CLOEXEC, NETLINK_ROUTE),
      "socket(AF_NETLINK, NETLINK_ROUTE)",
    );
    return new SyncNetlinkSocket(fd);
  }

  /**
   * Dump requests are checked strictly from now on, and their header fields and
   * attributes (a route dump's table and output link, an address dump's link) filter in
   * the kernel, which then neither builds nor sends what was not asked for.
   */
  enableStrictCheck(): void {
    const on = Buffer.alloc(4);
    on.writeInt32LE(1);
    libc.check(
      libc.setsockopt(this.fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, on, on.length),
      "setsockopt(NETLINK_GET_STRICT_CHK)",
    );
  }

  /**
   * The index of the link called `name` in this socket's netns (SIOCGIFINDEX, which any
   * socket answers for its netns): a name lookup in the kernel, no link message built.
   */
  indexOf(name: string): number {
    return this.ifreq(name, SIOCGIFINDEX, "SIOCGIFINDEX").readInt32LE(IFNAMSIZ);
  }

  /** The link's MAC (SIOCGIFHWADDR), as cheaply: 6 bytes, no link message built. */
  hardwareAddress(name: string): Buffer {
    // ifr_hwaddr: sa_family (2 bytes), then sa_data, the address.
    const at = IFNAMSIZ + 2;
    return Buffer.from(this.ifreq(name, SIOCGIFHWADDR, "SIOCGIFHWADDR").subarray(at, at + 6));
  }

  private ifreq(name: string, request: number, label: string): Buffer {
    if (this.closed) throw new Error("netlink socket closed");
    if (Buffer.byteLength(name) >= IFNAMSIZ) {
      // No link can have the name: the kernel would look up its first IFNAMSIZ - 1 bytes.
      throw new libc.SysCallError(`${label} ${name}`, os.constants.errno.ENODEV);
    }
    const ifreq = Buffer.alloc(IFREQ_SIZE);
    ifreq.write(name, 0, "utf8");
    libc.check(libc.ioctlPtr(this.fd, request, ifreq), `${label} ${name}`);
    return ifreq;
  }

  /** The netlink package's RtNetlinkSocket listens for unsolicited messages; there are none. */
  on(_event: string, _listener: (...args: unknown[]) => void): this {
    return this;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.close(this.fd);
  }

  /**
   * Sends one request with NLM_F_ACK and returns what answered it: the reply messages
   * (none for a plain ACK; a dump's parts, without the DONE). A refusal rejects, as the
   * netlink package's request does. Resolved by the time it returns.
   */
  request(
    type: number,
    data: Uint8Array | Uint8Array[],
    options: SyncRequestOptions = {},
  ): Promise<[NetlinkMessage[], undefined]> {
    try {
      return Promise.resolve([this.requestNow(type, data, options.flags ?? 0), undefined]);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  private requestNow(
    type: number,
    data: Uint8Array | Uint8Array[],
    flags: number,
  ): NetlinkMessage[] {
    if (this.closed) throw new Error("netlink socket closed");
    const seq = this.seq;
    this.seq = (this.seq % 0xffffffff) + 1;
    const dump = (flags & NLM_F_DUMP) === NLM_F_DUMP;
    const message = Buffer.concat(
      formatMessage({ type, flags: flags | NLM_F_REQUEST | NLM_F_ACK, seq, port: 0, data }),
    );
    const sent = Number(libc.sendto(this.fd, message, message.length, 0, null, 0));
    if (sent < 0) throw new libc.SysCallError(`netlink send type ${type}`, libc.errno());
    const replies: NetlinkMessage[] = [];
    for (;;) {
      for (const m of this.receive(type)) {
        if (m.seq !== seq) continue; // an answer to a request whose caller gave up
        if (m.type === NLMSG_ERROR) {
          const { errno } = parseError(m.data, m.flags);
          if (errno !== 0) throw rejected(errno);
          if (!dump) return replies; // the ACK ends a request that is not a dump
          continue;
        }
        if (m.type === NLMSG_DONE) {
          const errno = m.data.length >= 4 ? m.data.readInt32LE(0) : 0;
          if (errno < 0) throw rejected(errno);
          if (dump) return replies;
          continue;
        }
        replies.push(m); // a reply, or a dump's part: its ACK or DONE follows
      }
    }
  }

  /** The messages of one datagram; waits (briefly) only if the kernel has not answered. */
  private receive(type: number): NetlinkMessage[] {
    for (let waited = false; ; ) {
      const n = Number(
        libc.recvfrom(this.fd, receiveBuffer, receiveBuffer.length, libc.MSG_DONTWAIT, null, null),
      );
      if (n >= 0) return parseMessages(Buffer.from(receiveBuffer.subarray(0, n)));
      const errno = libc.errno();
      if (errno === EINTR) continue;
      if (errno !== EAGAIN || waited) {
        throw new libc.SysCallError(
          `netlink receive (type ${type})${waited ? `: no reply in ${LATE_REPLY_MS} ms` : ""}`,
          errno,
        );
      }
      const pfd = Buffer.alloc(8); // struct pollfd { int fd; short events; short revents; }
      pfd.writeInt32LE(this.fd, 0);
      pfd.writeInt16LE(POLLIN, 4);
      libc.poll(pfd, 1, LATE_REPLY_MS);
      waited = true;
    }
  }
}
