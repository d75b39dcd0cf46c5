// The handful of libc calls Node lacks, bound through koffi. Every wrapper returns the
// raw result and leaves errno checking to `check`, so callers name the operation.
import os from "node:os";
import koffi from "koffi";

const libc = koffi.load("libc.so.6");

export const open = libc.func("int open(const char *path, int flags, int mode)");
export const close = libc.func("int close(int fd)");
export const ioctlPtr = libc.func("int ioctl(int fd, unsigned long request, void *arg)");
// ioctl is variadic; on x86_64 an integer third argument passes the same way.
export const ioctlInt = libc.func("ioctl", "int", ["int", "unsigned long", "unsigned long"]);
export const setns = libc.func("int setns(int fd, int nstype)");
export const unshare = libc.func("int unshare(int flags)");
export const mount = libc.func(
  "int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const void *data)",
);
export const umount2 = libc.func("int umount2(const char *target, int flags)");
export const socket = libc.func("int socket(int domain, int type, int protocol)");
export const setsockopt = libc.func(
  "int setsockopt(int fd, int level, int name, const void *value, uint32_t len)",
);
export const bind = libc.func("int bind(int fd, const void *addr, uint32_t len)");
export const gettid = libc.func("int gettid(void)");
export const renameat2 = libc.func(
  "int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags)",
);
// syscall(2) for bpf(2), which glibc does not wrap: (nr, cmd, union bpf_attr *, size).
export const syscallBpf = libc.func(
  "long syscall(long nr, int cmd, void *attr, unsigned int size)",
);
// For the IPv6 sockets of sys/socket6.ts.
export const sendto = libc.func(
  "long sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)",
);
export const recvfrom = libc.func(
  "long recvfrom(int fd, void *buf, size_t len, int flags, void *addr, void *addrlen)",
);
// The msghdr is a Buffer laid out by sys/recvmsg.ts, its pointers set to other Buffers.
export const recvmsg = libc.func("long recvmsg(int fd, void *msg, int flags)");
export const poll = libc.func("int poll(void *fds, unsigned long nfds, int timeout)");
export const pthreadSigmask = libc.func(
  "int pthread_sigmask(int how, const void *set, void *oldset)",
);

// bits/sigaction.h, asm/signal.h; glibc's sigset_t is 1024 bits
export const SIG_BLOCK = 0;
export const SIG_SETMASK = 2;
export const SIGCHLD = 17;
export const SIGPROF = 27;
export const SIGSET_BYTES = 128;

// linux/sched.h
export const CLONE_NEWNET = 0x40000000;
// asm-generic/fcntl.h
export const O_RDONLY = 0;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_CLOEXEC = 0o2000000;
// linux/fcntl.h, linux/fs.h
export const AT_FDCWD = -100;
export const RENAME_EXCHANGE = 2;
// linux/mount.h
export const MS_BIND = 4096;
export const MS_REC = 16384;
export const MS_SHARED = 1 << 20;
export const MNT_DETACH = 2;
// linux/socket.h, linux/in.h
export const AF_INET = 2;
export const SOCK_DGRAM = 2;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_BROADCAST = 6;
export const SO_BINDTODEVICE = 25;
export const IPPROTO_UDP = 17;
// linux/in6.h, linux/ipv6.h, linux/icmpv6.h, asm-generic/socket.h, bits/socket.h
export const AF_INET6 = 10;
export const SOCK_RAW = 3;
export const SOCK_NONBLOCK = 0o4000;
export const IPPROTO_IPV6 = 41;
export const IPPROTO_ICMPV6 = 58;
export const IPV6_UNICAST_HOPS = 16;
export const IPV6_MULTICAST_HOPS = 18;
export const IPV6_MULTICAST_LOOP = 19;
export const IPV6_ADD_MEMBERSHIP = 20;
export const IPV6_V6ONLY = 26;
export const IPV6_RECVHOPLIMIT = 51;
export const IPV6_HOPLIMIT = 52;
export const ICMP6_FILTER = 1;
export const MSG_DONTWAIT = 0x40;
// asm-generic/errno-base.h, asm-generic/errno.h
export const ENOENT = 2;
export const EINVAL = 22;
export const ENOSYS = 38;
export const EOPNOTSUPP = 95;
export const EADDRNOTAVAIL = 99;

/** errno of the last failed call on this thread. */
export function errno(): number {
  return koffi.errno();
}

/** The symbolic name of an errno value, e.g. "EEXIST". */
export function errnoName(code: number): string {
  for (const [name, value] of Object.entries(os.constants.errno)) {
    if (value === code) return name;
  }
  return `errno ${code}`;
}

/** A failed system call, named by what it was for. */
export class SysCallError extends Error {
  readonly errno: number;
  readonly code: string;
  constructor(operation: string, errnoValue: number) {
    const code = errnoName(errnoValue);
    super(`${operation}: ${code}`);
    this.name = "SysCallError";
    this.errno = errnoValue;
    this.code = code;
  }
}

/** Throws a SysCallError naming `operation` when a libc call returned -1. */
export function check(result: number, operation: string): number {
  if (result === -1) throw new SysCallError(operation, errno());
  return result;
}
