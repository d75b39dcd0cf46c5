// Readiness for the fds Node cannot watch itself: dgram adopts UDP sockets only, so a raw
// ICMPv6 socket is watched here. One poll(2) for all of them is in flight at a time on
// libuv's thread pool (koffi's async call), with a pipe to restart it when the set
// changes; the handlers run on the main thread. One pool thread waits, however many pods.
import * as libc from "./libc";

export type ReadableHandler = () => void;

/** struct pollfd, asm-generic/poll.h: int fd; short events; short revents. */
const POLLFD_SIZE = 8;
/** Each poll(2) returns at least this often, so a lost wake-up costs a second at most. */
const POLL_TIMEOUT_MS = 1000;

class Poller {
  private readonly watched = new Map<number, ReadableHandler>();
  /** Fds unwatched while a poll was in flight: closed once it returns. */
  private closeAfterPoll: number[] = [];
  private wakeFds?: { read: number; write: number };
  private inFlight = false;

  watch(fd: number, onReadable: ReadableHandler): void {
    this.watched.set(fd, onReadable);
    this.kick();
  }

  /** Stops watching `fd` and closes it, after any poll that still holds it. */
  unwatchAndClose(fd: number): void {
    if (!this.watched.delete(fd)) return;
    if (this.inFlight) {
      this.closeAfterPoll.push(fd);
      this.wake();
    } else {
      libc.close(fd);
    }
  }

  private kick(): void {
    if (this.inFlight) this.wake();
    else this.poll();
  }

  private wakePipe(): { read: number; write: number } {
    if (!this.wakeFds) {
      const fds = Buffer.alloc(8);
      libc.check(libc.pipe2(fds, libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC), "pipe2 for the poller");
      this.wakeFds = { read: fds.readInt32LE(0), write: fds.readInt32LE(4) };
    }
    return this.wakeFds;
  }

  private wake(): void {
    libc.write(this.wakePipe().write, Buffer.from([1]), 1);
  }

  private poll(): void {
    if (this.watched.size === 0) return;
    const wake = this.wakePipe();
    const fds = [wake.read, ...this.watched.keys()];
    const set = Buffer.alloc(fds.length * POLLFD_SIZE);
    fds.forEach((fd, i) => {
      set.writeInt32LE(fd, i * POLLFD_SIZE);
      set.writeInt16LE(libc.POLLIN, i * POLLFD_SIZE + 4);
    });
    this.inFlight = true;
    libc.poll.async(set, fds.length, POLL_TIMEOUT_MS, (error: unknown) => {
      this.inFlight = false;
      for (const fd of this.closeAfterPoll) libc.close(fd);
      this.closeAfterPoll = [];
      const drain = Buffer.alloc(64);
      while (libc.read(wake.read, drain, drain.length) > 0);
      if (!error) {
        for (let i = 1; i < fds.length; i++) {
          if (set.readInt16LE(i * POLLFD_SIZE + 6) === 0) continue;
          const handler = this.watched.get(fds[i]!);
          try {
            handler?.();
          } catch {
            // a handler's own failure is its to count; the poller keeps serving the rest
          }
        }
      }
      this.poll();
    });
  }
}

export const poller = new Poller();
