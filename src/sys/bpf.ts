// eBPF without libbpf: a small assembler with labels, BPF_PROG_LOAD for tc classifiers,
// array maps (create, read) for the counters those classifiers keep, and hash maps
// (create, update, delete) for the tables user space fills. Everything goes through the
// bpf(2) syscall bound with koffi.
import koffi from "koffi";
import * as libc from "./libc";

// asm/unistd_64.h
const SYS_BPF = 321;
// linux/bpf.h: commands
const BPF_MAP_CREATE = 0;
const BPF_MAP_LOOKUP_ELEM = 1;
const BPF_MAP_UPDATE_ELEM = 2;
const BPF_MAP_DELETE_ELEM = 3;
const BPF_PROG_LOAD = 5;
// linux/bpf.h: types
export const BPF_PROG_TYPE_SCHED_CLS = 3;
const BPF_MAP_TYPE_HASH = 1;
const BPF_MAP_TYPE_ARRAY = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY = 6;
/** map_flags: elements are allocated on update, not all at creation. */
const BPF_F_NO_PREALLOC = 1;
const BPF_PSEUDO_MAP_FD = 1;
// linux/bpf.h: helpers
export const BPF_FUNC_map_lookup_elem = 1;
export const BPF_FUNC_skb_store_bytes = 9;
export const BPF_FUNC_l4_csum_replace = 11;
export const BPF_FUNC_redirect = 23;
export const BPF_FUNC_skb_load_bytes = 26;
export const BPF_FUNC_skb_change_tail = 38;
export const BPF_F_INGRESS = 1;
/** bpf_skb_store_bytes: keep a CHECKSUM_COMPLETE skb's csum right. */
export const BPF_F_RECOMPUTE_CSUM = 1;
/** bpf_l4_csum_replace flags: the field's size is in the low bits. */
export const BPF_F_PSEUDO_HDR = 1 << 4;
export const BPF_F_MARK_MANGLED_0 = 1 << 5;

// linux/bpf_common.h, linux/bpf.h: instruction classes and fields
const BPF_LD = 0x00;
const BPF_LDX = 0x01;
const BPF_ST = 0x02;
const BPF_STX = 0x03;
const BPF_ALU = 0x04;
const BPF_JMP = 0x05;
const BPF_JMP32 = 0x06;
const BPF_ALU64 = 0x07;
const BPF_IMM = 0x00;
const BPF_ABS = 0x20;
const BPF_IND = 0x40;
const BPF_MEM = 0x60;
const BPF_ATOMIC = 0xc0;
const BPF_W = 0x00;
const BPF_H = 0x08;
const BPF_B = 0x10;
const BPF_DW = 0x18;
const BPF_K = 0x00;
const BPF_X = 0x08;
const BPF_JA = 0x00;
const BPF_CALL = 0x80;
const BPF_EXIT = 0x90;
const BPF_MOV = 0xb0;

const ALU_OPS = { add: 0x00, sub: 0x10, or: 0x40, and: 0x50, lsh: 0x60, rsh: 0x70 } as const;
const JMP_OPS = { jeq: 0x10, jgt: 0x20, jge: 0x30, jne: 0x50, jlt: 0xa0, jle: 0xb0 } as const;
const SIZES = { b: BPF_B, h: BPF_H, w: BPF_W, dw: BPF_DW } as const;

export type Reg = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10;
export type AluOp = keyof typeof ALU_OPS;
export type JmpOp = keyof typeof JMP_OPS;
export type Size = keyof typeof SIZES;

/** The frame pointer, read-only; the stack is below it. */
export const FP: Reg = 10;

function insn(code: number, dst: number, src: number, off: number, imm: number): Buffer {
  const b = Buffer.alloc(8);
  b[0] = code;
  b[1] = (src << 4) | dst;
  b.writeInt16LE(off, 2);
  b.writeInt32LE(imm | 0, 4);
  return b;
}

type Item = Buffer | { jump: number; reg: number; src?: number; imm: number; to: string };

/**
 * Builds a program instruction by instruction; jumps name labels and assemble() turns
 * them into offsets. Comparisons and ALU on immediates are 32-bit (JMP32, ALU32), so an
 * address such as 0xfe800000 compares as the unsigned word LD_ABS loaded.
 */
export class BpfAssembler {
  private readonly items: Item[] = [];
  private readonly labels = new Map<string, number>();
  private slots = 0;

  /** Places `name` at the next instruction. */
  label(name: string): this {
    if (this.labels.has(name)) throw new Error(`bpf assembler: label ${name} defined twice`);
    this.labels.set(name, this.slots);
    return this;
  }

  private push(b: Buffer): this {
    this.items.push(b);
    this.slots += b.length / 8;
    return this;
  }

  movImm(dst: Reg, imm: number): this {
    return this.push(insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm));
  }

  movReg(dst: Reg, src: Reg): this {
    return this.push(insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0));
  }

  /** 32-bit ALU with an immediate: the result is zero-extended. */
  alu32(op: AluOp, dst: Reg, imm: number): this {
    return this.push(insn(BPF_ALU | ALU_OPS[op] | BPF_K, dst, 0, 0, imm));
  }

  /** 32-bit ALU with a register: the result is zero-extended. */
  alu32Reg(op: AluOp, dst: Reg, src: Reg): this {
    return this.push(insn(BPF_ALU | ALU_OPS[op] | BPF_X, dst, src, 0, 0));
  }

  /** 64-bit ALU with a register (offsets, pointers). */
  alu64Reg(op: AluOp, dst: Reg, src: Reg): this {
    return this.push(insn(BPF_ALU64 | ALU_OPS[op] | BPF_X, dst, src, 0, 0));
  }

  alu64(op: AluOp, dst: Reg, imm: number): this {
    return this.push(insn(BPF_ALU64 | ALU_OPS[op] | BPF_K, dst, 0, 0, imm));
  }

  /**
   * r0 = packet bytes at `off` from the Ethernet header, in host order (needs the skb in
   * r6); a read past the end ends the program with 0.
   */
  ldAbs(size: "b" | "h" | "w", off: number): this {
    return this.push(insn(BPF_LD | BPF_ABS | SIZES[size], 0, 0, 0, off));
  }

  /** r0 = packet bytes at `src + off`, as ldAbs. */
  ldInd(size: "b" | "h" | "w", src: Reg, off: number): this {
    return this.push(insn(BPF_LD | BPF_IND | SIZES[size], 0, src, 0, off));
  }

  /** dst = *(size *)(src + off): a context field or a stack slot. */
  loadMem(size: Size, dst: Reg, src: Reg, off: number): this {
    return this.push(insn(BPF_LDX | BPF_MEM | SIZES[size], dst, src, off, 0));
  }

  /** *(size *)(dst + off) = src */
  storeReg(size: Size, dst: Reg, off: number, src: Reg): this {
    return this.push(insn(BPF_STX | BPF_MEM | SIZES[size], dst, src, off, 0));
  }

  /** *(size *)(dst + off) = imm */
  storeImm(size: Size, dst: Reg, off: number, imm: number): this {
    return this.push(insn(BPF_ST | BPF_MEM | SIZES[size], dst, 0, off, imm));
  }

  /** Atomic *(u64 *)(dst + off) += src. */
  atomicAdd64(dst: Reg, off: number, src: Reg): this {
    return this.push(insn(BPF_STX | BPF_ATOMIC | BPF_DW, dst, src, off, ALU_OPS.add));
  }

  /** dst = the map with fd `mapFd` (two instruction slots; the kernel puts the map there). */
  ldMapFd(dst: Reg, mapFd: number): this {
    this.push(insn(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, mapFd));
    return this.push(insn(0, 0, 0, 0, 0));
  }

  /** if (u32)reg `op` (u32)imm goto label */
  jmp(op: JmpOp, reg: Reg, imm: number, to: string): this {
    this.items.push({ jump: BPF_JMP32 | JMP_OPS[op] | BPF_K, reg, src: 0, imm, to });
    this.slots++;
    return this;
  }

  /** if (u32)reg `op` (u32)src goto label */
  jmpReg(op: JmpOp, reg: Reg, src: Reg, to: string): this {
    this.items.push({ jump: BPF_JMP32 | JMP_OPS[op] | BPF_X, reg, src, imm: 0, to });
    this.slots++;
    return this;
  }

  /** if reg `op` imm goto label, 64-bit (the verifier's null check of a pointer needs it) */
  jmp64(op: JmpOp, reg: Reg, imm: number, to: string): this {
    this.items.push({ jump: BPF_JMP | JMP_OPS[op] | BPF_K, reg, src: 0, imm, to });
    this.slots++;
    return this;
  }

  /** if reg `op` src goto label, 64-bit (bounds the verifier keeps for sizes) */
  jmpReg64(op: JmpOp, reg: Reg, src: Reg, to: string): this {
    this.items.push({ jump: BPF_JMP | JMP_OPS[op] | BPF_X, reg, src, imm: 0, to });
    this.slots++;
    return this;
  }

  goto(to: string): this {
    this.items.push({ jump: BPF_JMP | BPF_JA, reg: 0, src: 0, imm: 0, to });
    this.slots++;
    return this;
  }

  call(helper: number): this {
    return this.push(insn(BPF_JMP | BPF_CALL, 0, 0, 0, helper));
  }

  exit(): this {
    return this.push(insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0));
  }

  /** r0 = code; exit */
  ret(code: number): this {
    return this.movImm(0, code).exit();
  }

  assemble(): Buffer {
    let at = 0;
    const out: Buffer[] = [];
    for (const item of this.items) {
      if (Buffer.isBuffer(item)) {
        out.push(item);
        at += item.length / 8;
        continue;
      }
      const target = this.labels.get(item.to);
      if (target === undefined) throw new Error(`bpf assembler: no label ${item.to}`);
      const off = target - at - 1;
      if (off < 0)
        throw new Error(`bpf assembler: jump back to ${item.to} (loops are not allowed)`);
      if (off > 0x7fff) throw new Error(`bpf assembler: jump to ${item.to} too far`);
      out.push(insn(item.jump, item.reg, item.src ?? 0, off, item.imm));
      at++;
    }
    return Buffer.concat(out);
  }
}

// ------------------------------------------------------------- the syscall

// union bpf_attr, the BPF_PROG_LOAD member (linux/bpf.h), zero padded.
const ProgLoadAttr = koffi.struct("vmlet_bpf_prog_load_attr", {
  prog_type: "uint32",
  insn_cnt: "uint32",
  insns: "void *",
  license: "const char *",
  log_level: "uint32",
  log_size: "uint32",
  log_buf: "void *",
  kern_version: "uint32",
  prog_flags: "uint32",
  prog_name: koffi.array("char", 16, "String"),
  pad: koffi.array("uint8", 64),
});
// The BPF_MAP_*_ELEM member.
const MapElemAttr = koffi.struct("vmlet_bpf_map_elem_attr", {
  map_fd: "uint32",
  key: "void *",
  value: "void *",
  flags: "uint64",
  pad: koffi.array("uint8", 96),
});
// The BPF_MAP_CREATE member is all u32s up to map_name.
const MAP_CREATE_ATTR_SIZE = 72;

function bpf(cmd: number, attr: Buffer): number {
  return Number(libc.syscallBpf(SYS_BPF, cmd, attr, attr.length));
}

/**
 * Loads a program; returns its fd (close it once attached). The verifier runs without a log
 * (writing one costs it as much again as verifying); only a refused program is loaded a
 * second time with the log on, so that the verifier's words go into the error.
 */
export function loadProgram(
  name: string,
  progType: number,
  insns: Buffer,
  what = `BPF_PROG_LOAD ${name}`,
): number {
  const fd = tryLoad(name, progType, insns);
  if (fd >= 0) return fd;
  const errno = libc.errno();
  const log = Buffer.alloc(65536);
  const again = tryLoad(name, progType, insns, log);
  if (again >= 0) return again; // refused once, then not: a transient error (ENOMEM)
  const text = log.toString("latin1", 0, Math.max(0, log.indexOf(0))).trim();
  // The verifier's verdict is at the end of its log.
  const tail = text.split("\n").slice(-12).join("\n");
  throw new libc.SysCallError(`${what}${tail ? ` (${tail})` : ""}`, errno);
}

// asm-generic/errno-base.h
const EAGAIN = 11;
/** libbpf's count too: the verifier gives up with EAGAIN when a signal is pending. */
const LOAD_ATTEMPTS = 5;

/**
 * One BPF_PROG_LOAD, again while the verifier was interrupted: a daemon that runs CNI
 * plugins gets a SIGCHLD for each, and with hundreds of pods at once one lands mid-verify.
 * The signals that come at a steady rate are blocked on this thread meanwhile, so that
 * they no longer throw the verifier's work away: SIGCHLD (another of Node's threads takes
 * it, and libuv hears of it as ever; the loads run while CNI ADD does, and its plugins
 * exit then) and SIGPROF (`node --cpu-prof`'s sampler, every millisecond: with it, every
 * load of the guard's larger program failed all its attempts). A blocked SIGPROF is taken
 * once the load returns; one sample is late.
 */
function tryLoad(name: string, progType: number, insns: Buffer, log?: Buffer): number {
  return withSteadySignalsBlocked(() => {
    let fd = loadOnce(name, progType, insns, log);
    for (let i = 1; i < LOAD_ATTEMPTS && fd < 0 && libc.errno() === EAGAIN; i++) {
      fd = loadOnce(name, progType, insns, log);
    }
    return fd;
  });
}

const steadySignals = (() => {
  const set = Buffer.alloc(libc.SIGSET_BYTES);
  for (const signal of [libc.SIGCHLD, libc.SIGPROF]) {
    const bit = signal - 1;
    set[bit >> 3] |= 1 << (bit & 7);
  }
  return set;
})();

function withSteadySignalsBlocked<T>(fn: () => T): T {
  const old = Buffer.alloc(libc.SIGSET_BYTES);
  if (libc.pthreadSigmask(libc.SIG_BLOCK, steadySignals, old) !== 0) return fn();
  try {
    return fn();
  } finally {
    libc.pthreadSigmask(libc.SIG_SETMASK, old, null);
  }
}

function loadOnce(name: string, progType: number, insns: Buffer, log?: Buffer): number {
  const attr = Buffer.alloc(koffi.sizeof(ProgLoadAttr));
  koffi.encode(attr, ProgLoadAttr, {
    prog_type: progType,
    insn_cnt: insns.length / 8,
    insns,
    license: "GPL",
    log_level: log ? 1 : 0,
    log_size: log ? log.length : 0,
    log_buf: log ?? null,
    kern_version: 0,
    prog_flags: 0,
    prog_name: name.slice(0, 15),
    pad: new Array<number>(64).fill(0),
  });
  return bpf(BPF_PROG_LOAD, attr);
}

function createMap(
  name: string,
  type: number,
  sizes: { key: number; value: number; entries: number },
  flags = 0,
): number {
  const attr = Buffer.alloc(MAP_CREATE_ATTR_SIZE);
  attr.writeUInt32LE(type, 0);
  attr.writeUInt32LE(sizes.key, 4);
  attr.writeUInt32LE(sizes.value, 8);
  attr.writeUInt32LE(sizes.entries, 12);
  attr.writeUInt32LE(flags, 16);
  attr.write(name.slice(0, 15), 28, "latin1"); // map_name after map_flags, inner_map_fd, numa_node
  const fd = bpf(BPF_MAP_CREATE, attr);
  if (fd < 0) throw new libc.SysCallError(`BPF_MAP_CREATE ${name}`, libc.errno());
  return fd;
}

/** An array map of `entries` u64 counters; the caller owns the fd. */
export function createCounterMap(name: string, entries: number): number {
  return createMap(name, BPF_MAP_TYPE_ARRAY, { key: 4, value: 8, entries });
}

/**
 * A hash map of at most `entries` elements, allocated as they are added (a map that
 * stays nearly empty costs nearly nothing); the caller owns the fd.
 */
export function createHashMap(
  name: string,
  sizes: { key: number; value: number; entries: number },
): number {
  return createMap(name, BPF_MAP_TYPE_HASH, sizes, BPF_F_NO_PREALLOC);
}

/** An array map of `entries` values of `valueSize` bytes, zeroed; the caller owns the fd. */
export function createArrayMap(name: string, valueSize: number, entries: number): number {
  return createMap(name, BPF_MAP_TYPE_ARRAY, { key: 4, value: valueSize, entries });
}

/** A one-element per-CPU array: a program's scratch space larger than its stack. */
export function createScratchMap(name: string, size: number): number {
  return createMap(name, BPF_MAP_TYPE_PERCPU_ARRAY, { key: 4, value: size, entries: 1 });
}

function elemAttr(mapFd: number, key: Buffer, value: Buffer | null, flags: number): Buffer {
  const attr = Buffer.alloc(koffi.sizeof(MapElemAttr));
  koffi.encode(attr, MapElemAttr, {
    map_fd: mapFd,
    key,
    value,
    flags,
    pad: new Array<number>(96).fill(0),
  });
  return attr;
}

// linux/bpf.h: BPF_MAP_UPDATE_ELEM flags
const BPF_ANY = 0;

/** Adds or replaces one element; the buffers are exactly the map's key and value sizes. */
export function updateElem(mapFd: number, key: Buffer, value: Buffer, what: string): void {
  if (bpf(BPF_MAP_UPDATE_ELEM, elemAttr(mapFd, key, value, BPF_ANY)) < 0) {
    throw new libc.SysCallError(`BPF_MAP_UPDATE_ELEM ${what}`, libc.errno());
  }
}

// asm-generic/errno-base.h
const ENOENT = 2;

/** Writes `value` at `index` of an array map (an array's slots always exist). */
export function updateArrayElem(mapFd: number, index: number, value: Buffer): void {
  const key = Buffer.alloc(4);
  key.writeUInt32LE(index);
  updateElem(mapFd, key, value, `fd ${mapFd} [${index}]`);
}

/** Removes one element; one that is not there is fine. */
export function deleteElem(mapFd: number, key: Buffer, what: string): void {
  if (bpf(BPF_MAP_DELETE_ELEM, elemAttr(mapFd, key, null, 0)) < 0 && libc.errno() !== ENOENT) {
    throw new libc.SysCallError(`BPF_MAP_DELETE_ELEM ${what}`, libc.errno());
  }
}

/** Reads every counter of an array map made by createCounterMap. */
export function readCounters(mapFd: number, entries: number): bigint[] {
  const key = Buffer.alloc(4);
  const value = Buffer.alloc(8);
  const attr = Buffer.alloc(koffi.sizeof(MapElemAttr));
  const out: bigint[] = [];
  for (let i = 0; i < entries; i++) {
    key.writeUInt32LE(i);
    koffi.encode(attr, MapElemAttr, {
      map_fd: mapFd,
      key,
      value,
      flags: 0,
      pad: new Array<number>(96).fill(0),
    });
    if (bpf(BPF_MAP_LOOKUP_ELEM, attr) < 0) {
      throw new libc.SysCallError(`BPF_MAP_LOOKUP_ELEM fd ${mapFd} [${i}]`, libc.errno());
    }
    out.push(value.readBigUInt64LE());
  }
  return out;
}
