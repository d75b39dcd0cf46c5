// recvmsg(2) for an IPv6 datagram socket that asked for IPV6_RECVHOPLIMIT: the datagram,
// its source, and the hop limit it arrived with (RFC 3542 section 6.3), which recvfrom
// cannot tell. NDP needs it: a router discards an RS whose hop limit is not 255, the proof
// that it was not forwarded (RFC 4861 section 6.1.1).
import koffi from "koffi";
import { bytesToIpv6 } from "../util/ipv6";
import * as libc from "./libc";

// x86_64 layouts, linux/socket.h and linux/in6.h.
/** struct msghdr: name, namelen, iov, iovlen, control, controllen, flags. */
const MSGHDR_SIZE = 56;
const MSG_NAME = 0;
const MSG_NAMELEN = 8;
const MSG_IOV = 16;
const MSG_IOVLEN = 24;
const MSG_CONTROL = 32;
const MSG_CONTROLLEN = 40;
/** struct iovec: base, len. */
const IOVEC_SIZE = 16;
/** struct cmsghdr: len (size_t), level, type, then the data at CMSG_ALIGN(16). */
const CMSGHDR_SIZE = 16;
const CONTROL_SIZE = 64;
const SOCKADDR_IN6_SIZE = 28;

export interface ReceivedDatagram {
  message: Buffer;
  source: string;
  port: number;
  /** The IPv6 header's hop limit; undefined if the kernel sent no IPV6_HOPLIMIT. */
  hopLimit?: number;
}

/**
 * Buffers for one socket's recvmsg calls, allocated once: the msghdr points into them by
 * address (Buffer.alloc memory does not move), so each call marshals nothing.
 */
export class HopLimitReader {
  private readonly header = Buffer.alloc(MSGHDR_SIZE);
  private readonly iov = Buffer.alloc(IOVEC_SIZE);
  private readonly name = Buffer.alloc(SOCKADDR_IN6_SIZE);
  private readonly control = Buffer.alloc(CONTROL_SIZE);
  private readonly data: Buffer;

  constructor(maxMessage: number) {
    this.data = Buffer.alloc(maxMessage);
    this.iov.writeBigUInt64LE(koffi.address(this.data), 0);
    this.iov.writeBigUInt64LE(BigInt(maxMessage), 8);
    this.header.writeBigUInt64LE(koffi.address(this.name), MSG_NAME);
    this.header.writeBigUInt64LE(koffi.address(this.iov), MSG_IOV);
    this.header.writeBigUInt64LE(1n, MSG_IOVLEN);
    this.header.writeBigUInt64LE(koffi.address(this.control), MSG_CONTROL);
  }

  /** One datagram, or undefined when none is waiting (EAGAIN) or the call failed. */
  receive(fd: number): ReceivedDatagram | undefined {
    // The kernel writes back how much of the name and control buffers it used.
    this.header.writeUInt32LE(SOCKADDR_IN6_SIZE, MSG_NAMELEN);
    this.header.writeBigUInt64LE(BigInt(CONTROL_SIZE), MSG_CONTROLLEN);
    const n = Number(libc.recvmsg(fd, this.header, libc.MSG_DONTWAIT));
    if (n < 0) return undefined;
    const datagram: ReceivedDatagram = {
      message: Buffer.from(this.data.subarray(0, n)),
      source: bytesToIpv6(this.name, 8),
      port: this.name.readUInt16BE(2),
    };
    const hopLimit = this.hopLimit(Number(this.header.readBigUInt64LE(MSG_CONTROLLEN)));
    if (hopLimit !== undefined) datagram.hopLimit = hopLimit;
    return datagram;
  }

  /** Walks the control messages (CMSG_FIRSTHDR / CMSG_NXTHDR) for IPV6_HOPLIMIT. */
  private hopLimit(controlLength: number): number | undefined {
    let offset = 0;
    while (offset + CMSGHDR_SIZE <= controlLength) {
      const length = Number(this.control.readBigUInt64LE(offset));
      if (length < CMSGHDR_SIZE || offset + length > controlLength) return undefined;
      const level = this.control.readInt32LE(offset + 8);
      const type = this.control.readInt32LE(offset + 12);
      if (
        level === libc.IPPROTO_IPV6 &&
        type === libc.IPV6_HOPLIMIT &&
        length >= CMSGHDR_SIZE + 4
      ) {
        return this.control.readInt32LE(offset + CMSGHDR_SIZE);
      }
      offset += (length + 7) & ~7; // CMSG_ALIGN
    }
    return undefined;
  }
}
