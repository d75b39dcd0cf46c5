// A UDP socket made inside a pod's netns and bound to one device there, handed to
// Node's dgram. A socket keeps the netns it was created in, so the switch is brief.
import dgram from "node:dgram";
import * as libc from "./libc";
import { withNetns } from "./netns";

export interface BoundUdpSocketOptions {
  /** Device inside the netns the socket sends and receives on (SO_BINDTODEVICE). */
  device: string;
  port: number;
  /** Local address, 0.0.0.0 by default: DHCP requests arrive as broadcasts. */
  address?: string;
}

function sockaddrIn(address: string, port: number): Buffer {
  const sa = Buffer.alloc(16); // struct sockaddr_in, linux/in.h
  sa.writeUInt16LE(libc.AF_INET, 0);
  sa.writeUInt16BE(port, 2);
  const octets = address.split(".").map(Number);
  if (octets.length !== 4 || octets.some((o) => !Number.isInteger(o) || o < 0 || o > 255)) {
    throw new Error(`sockaddr_in: ${JSON.stringify(address)} is not an IPv4 address`);
  }
  Buffer.from(octets).copy(sa, 4);
  return sa;
}

function setIntOption(fd: number, name: number, label: string): void {
  const one = Buffer.alloc(4);
  one.writeInt32LE(1);
  libc.check(libc.setsockopt(fd, libc.SOL_SOCKET, name, one, 4), label);
}

/**
 * Makes the socket inside `nsPath` and binds it: a plain fd, for listenOnUdpFd() now or
 * later (a socket made ahead holds no handle on Node's loop meanwhile).
 */
export function bindUdpFd(nsPath: string, options: BoundUdpSocketOptions): number {
  const { device, port, address = "0.0.0.0" } = options;
  const where = `udp ${address}:${port} on ${device} in ${nsPath}`;
  return withNetns(nsPath, () => {
    const sock = libc.check(
      libc.socket(libc.AF_INET, libc.SOCK_DGRAM | libc.SOCK_CLOEXEC, libc.IPPROTO_UDP),
      `socket for ${where}`,
    );
    try {
      setIntOption(sock, libc.SO_REUSEADDR, `SO_REUSEADDR for ${where}`);
      setIntOption(sock, libc.SO_BROADCAST, `SO_BROADCAST for ${where}`);
      const dev = Buffer.from(`${device}\0`);
      libc.check(
        libc.setsockopt(sock, libc.SOL_SOCKET, libc.SO_BINDTODEVICE, dev, dev.length),
        `SO_BINDTODEVICE for ${where}`,
      );
      const sa = sockaddrIn(address, port);
      libc.check(libc.bind(sock, sa, sa.length), `bind ${where}`);
      return sock;
    } catch (error) {
      libc.close(sock);
      throw error;
    }
  });
}

/** A bound UDP fd handed to dgram, listening; the socket owns the fd from here on. */
export async function listenOnUdpFd(fd: number): Promise<dgram.Socket> {
  const socket = dgram.createSocket({ type: "udp4" });
  await new Promise<void>((resolve, reject) => {
    const failed = (error: Error) => {
      socket.close(); // and the fd with it
      reject(error);
    };
    socket.once("error", failed);
    socket.bind({ fd }, () => {
      socket.off("error", failed);
      resolve();
    });
  });
  return socket;
}

/** Opens the socket inside `nsPath` and returns it bound and listening. */
export async function openBoundUdpSocket(
  nsPath: string,
  options: BoundUdpSocketOptions,
): Promise<dgram.Socket> {
  return listenOnUdpFd(bindUdpFd(nsPath, options));
}
