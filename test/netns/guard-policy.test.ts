// The guard's programs as the kernel's verifier sees them, for every shape of policy the
// annotation allows, and the assembler's label handling.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  DROP_REASONS,
  type Prefix,
  tapIngressProgram,
  vethEgressProgram,
  vethIngressProgram,
} from "../../src/guard/policy";
import * as bpf from "../../src/sys/bpf";
import * as libc from "../../src/sys/libc";

function loads(name: string, insns: Buffer): void {
  const fd = bpf.loadProgram(name, bpf.BPF_PROG_TYPE_SCHED_CLS, insns);
  assert.ok(fd >= 0);
  libc.close(fd);
}

describe("guard programs", () => {
  it("pass the verifier with no extra prefixes, with IPv4 and IPv6 prefixes of every length, and with 64 of them", () => {
    const map = bpf.createCounterMap("vmlet_test", DROP_REASONS.length);
    try {
      const own: Prefix[] = [
        { family: 4, address: "10.244.1.5", prefixLength: 32 },
        { family: 6, address: "fd00:10::5", prefixLength: 128 },
      ];
      const odd: Prefix[] = [0, 1, 7, 24, 31].map((l) => ({
        family: 4,
        address: "0.0.0.0",
        prefixLength: l,
      }));
      const odd6: Prefix[] = [0, 10, 33, 64, 100, 127].map((l) => ({
        family: 6,
        address: "::",
        prefixLength: l,
      }));
      const many: Prefix[] = Array.from({ length: 64 }, (_, i) => ({
        family: i % 2 ? 6 : 4,
        address: i % 2 ? `fd00:${i}::` : `10.${i}.0.0`,
        prefixLength: i % 2 ? 64 : 16,
      }));
      for (const prefixes of [own, [...own, ...odd, ...odd6], [...own, ...many]]) {
        loads("t_tap", tapIngressProgram({ guestMac: "52:54:00:aa:bb:cc", prefixes }, 7, map));
      }
      loads("t_veth_in", vethIngressProgram(map));
      loads("t_veth_out", vethEgressProgram("52:54:00:aa:bb:cc", map));
      assert.deepEqual(
        bpf.readCounters(map, DROP_REASONS.length),
        DROP_REASONS.map(() => 0n),
      );
    } finally {
      libc.close(map);
    }
  });
});

describe("bpf assembler", () => {
  it("resolves forward labels, and refuses a missing label, a label twice and a jump back", () => {
    const a = new bpf.BpfAssembler();
    a.movImm(0, 1).jmp("jeq", 0, 1, "out").ldMapFd(1, 3).label("out").exit();
    const insns = a.assemble();
    assert.equal(insns.length / 8, 5, "ldMapFd takes two slots");
    assert.equal(insns.readInt16LE(8 + 2), 2, "the jump skips both slots of ldMapFd");
    assert.throws(() => new bpf.BpfAssembler().goto("nowhere").assemble(), /no label nowhere/);
    assert.throws(() => new bpf.BpfAssembler().label("x").label("x"), /defined twice/);
    assert.throws(
      () => new bpf.BpfAssembler().label("top").movImm(0, 0).goto("top").assemble(),
      /jump back to top/,
    );
  });
});
