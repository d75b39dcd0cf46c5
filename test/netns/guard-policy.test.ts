// The guard's programs as the kernel's verifier sees them, for every shape of policy the
// annotation allows, and the assembler's label handling.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import {
  DROP_REASONS,
  encodeGuardConfig,
  GUARD_CONFIG_SIZE,
  GUARD_PREFIX_SLOTS,
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
    const config = bpf.createArrayMap("vmlet_test_cfg", GUARD_CONFIG_SIZE, 1);
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
      const all64 = (family: 4 | 6): Prefix[] =>
        Array.from({ length: 64 }, (_, i) => ({
          family,
          address: family === 6 ? `fd00:${i}::` : `10.${i}.0.0`,
          prefixLength: family === 6 ? 64 : 16,
        }));
      // The programs hold no policy: one load each serves every shape, which is the config;
      // the tap's is as long as its prefix slots, one to all of them.
      loads("t_tap", tapIngressProgram(config, map, { v4: 1, v6: 1 }));
      loads("t_tap", tapIngressProgram(config, map, { v4: 2, v6: 1 }));
      loads("t_tap", tapIngressProgram(config, map));
      loads("t_veth_in", vethIngressProgram(map));
      loads("t_veth_out", vethEgressProgram(config, map));
      const bridge = { index: 7, mac: "02:11:22:33:44:55" };
      for (const prefixes of [own, [...own, ...odd, ...odd6], [...own, ...many]]) {
        for (const routesIpv6 of [false, true]) {
          const value = encodeGuardConfig(
            { guestMac: "52:54:00:aa:bb:cc", prefixes, routesIpv6 },
            bridge,
          );
          bpf.updateArrayElem(config, 0, value);
        }
      }
      // Every slot of a family: the annotation's 64 beside the NIC's own addresses.
      for (const family of [4, 6] as const) {
        const full = [...own, ...all64(family), ...all64(family)].slice(0, GUARD_PREFIX_SLOTS);
        bpf.updateArrayElem(
          config,
          0,
          encodeGuardConfig({ guestMac: "52:54:00:aa:bb:cc", prefixes: full }, bridge),
        );
      }
      assert.deepEqual(
        bpf.readCounters(map, DROP_REASONS.length),
        DROP_REASONS.map(() => 0n),
      );
    } finally {
      libc.close(map);
      libc.close(config);
    }
  });

  it("refuses more source prefixes of a family than its slots, saying how many fit", () => {
    const bridge = { index: 7, mac: "02:11:22:33:44:55" };
    const two: Prefix[] = [
      { family: 4, address: "10.244.1.5", prefixLength: 32 },
      { family: 4, address: "10.9.0.0", prefixLength: 16 },
    ];
    assert.throws(
      () =>
        encodeGuardConfig({ guestMac: "52:54:00:aa:bb:cc", prefixes: two }, bridge, {
          v4: 1,
          v6: 1,
        }),
      /2 IPv4 source prefixes; the program has 1 slots/,
    );
    const prefixes: Prefix[] = Array.from({ length: GUARD_PREFIX_SLOTS + 1 }, (_, i) => ({
      family: 6,
      address: `fd00:${i}::`,
      prefixLength: 64,
    }));
    assert.throws(
      () =>
        encodeGuardConfig(
          { guestMac: "52:54:00:aa:bb:cc", prefixes },
          { index: 7, mac: "02:11:22:33:44:55" },
        ),
      new RegExp(
        `${GUARD_PREFIX_SLOTS + 1} IPv6 source prefixes; at most ${GUARD_PREFIX_SLOTS} fit`,
      ),
    );
  });
});

describe("guard programs under a profiler", () => {
  it("load in a daemon run with node --cpu-prof: its SIGPROF every 100 us does not make the verifier give up", () => {
    // The real sampler of the real runtime, in a child: V8's profiler signals the main
    // thread at this interval, and a pending signal ends verification with EAGAIN.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmlet-prof-"));
    try {
      const policy = require.resolve("../../src/guard/policy");
      const bpfModule = require.resolve("../../src/sys/bpf");
      const script = `
        const policy = require(${JSON.stringify(policy)});
        const bpf = require(${JSON.stringify(bpfModule)});
        const map = bpf.createCounterMap("vmlet_prof", policy.DROP_REASONS.length);
        const config = bpf.createArrayMap("vmlet_prof_cfg", policy.GUARD_CONFIG_SIZE, 1);
        let loaded = 0;
        for (let i = 0; i < 20; i++) {
          const fd = bpf.loadProgram("t_tap", bpf.BPF_PROG_TYPE_SCHED_CLS,
            policy.tapIngressProgram(config, map));
          require("node:fs").closeSync(fd);
          loaded++;
        }
        console.log("loaded " + loaded);`;
      const run = spawnSync(
        process.execPath,
        ["--cpu-prof", "--cpu-prof-interval", "100", "--cpu-prof-dir", dir, "-e", script],
        { encoding: "utf8", timeout: 60_000 },
      );
      assert.equal(run.status, 0, `child failed: ${run.stderr}`);
      assert.match(run.stdout, /loaded 20/);
      assert.equal(fs.readdirSync(dir).filter((f) => f.endsWith(".cpuprofile")).length, 1);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
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
