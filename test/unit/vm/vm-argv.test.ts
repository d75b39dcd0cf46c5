import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { resolveAccel } from "../../../src/runtime/vm/accel";
import { buildQemuArgv, qemuOptValue, vmPaths } from "../../../src/runtime/vm/argv";
import { VmSpecError } from "../../../src/runtime/vm/errors";
import type { VmSpec } from "../../../src/runtime/vm/types";

function spec(overrides: Partial<VmSpec> = {}): VmSpec {
  return {
    id: "c0ffee",
    dir: "/var/lib/vmlet/containers/c0ffee",
    baseImage: { path: "/var/lib/vmlet/images/sha256-ab", format: "qcow2" },
    vcpus: 2,
    memoryMiB: 512,
    accel: "tcg",
    taps: [
      { ifname: "eth0", tap: "tap0", fd: 17, guestMac: "0A:58:0A:F4:00:05", mtu: 1450 },
      { ifname: "net1", tap: "tap1", fd: 21, guestMac: "02:00:00:00:00:01", mtu: 9000 },
    ],
    cloudInit: { instanceId: "c0ffee", hostname: "pod", files: [] },
    logPath: "/var/log/pods/x/c/0.log",
    ...overrides,
  };
}

/** The value following each occurrence of `flag`. */
function values(args: string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag ? [args[i + 1]!] : []));
}

describe("the QEMU command line", () => {
  const paths = vmPaths("/var/lib/vmlet/containers/c0ffee");

  it("gives each tap fd its own stdio slot from 3 on, as -netdev tap,fd=N without vnet_hdr", () => {
    const { args, extraFds } = buildQemuArgv(spec(), paths, "tcg");
    assert.deepEqual(extraFds, [17, 21]);
    assert.deepEqual(values(args, "-netdev"), ["tap,id=net0,fd=3", "tap,id=net1,fd=4"]);
    assert.ok(!args.some((a) => a.includes("vnet_hdr")));
  });

  it("makes each NIC a virtio-net device with the CNI MAC and the pod MTU as host_mtu", () => {
    const nics = values(buildQemuArgv(spec(), paths, "tcg").args, "-device").filter((d) =>
      d.startsWith("virtio-net-pci"),
    );
    assert.deepEqual(nics, [
      "virtio-net-pci,netdev=net0,mac=0a:58:0a:f4:00:05,host_mtu=1450",
      "virtio-net-pci,netdev=net1,mac=02:00:00:00:00:01,host_mtu=9000",
    ]);
  });

  it("sets vCPUs and memory from the spec", () => {
    const { args } = buildQemuArgv(spec({ vcpus: 3, memoryMiB: 1536 }), paths, "tcg");
    assert.deepEqual(values(args, "-smp"), ["3"]);
    assert.deepEqual(values(args, "-m"), ["1536M"]);
  });

  it("asks for kvm, tcg, or kvm with tcg as QEMU's fallback", () => {
    assert.deepEqual(values(buildQemuArgv(spec(), paths, "kvm").args, "-accel"), ["kvm"]);
    assert.deepEqual(values(buildQemuArgv(spec(), paths, "tcg").args, "-accel"), ["tcg"]);
    assert.deepEqual(values(buildQemuArgv(spec(), paths, "kvm:tcg").args, "-accel"), [
      "kvm",
      "tcg",
    ]);
  });

  it("resolves auto to kvm+tcg when /dev/kvm opens and to tcg when it does not", () => {
    assert.equal(
      resolveAccel("auto", () => true),
      "kvm:tcg",
    );
    assert.equal(
      resolveAccel("auto", () => false),
      "tcg",
    );
    assert.equal(
      resolveAccel("kvm", () => false),
      "kvm",
    );
    assert.equal(
      resolveAccel("tcg", () => true),
      "tcg",
    );
  });

  it("boots the overlay from virtio-blk, attaches the seed read-only, and has no display or defaults", () => {
    const { args } = buildQemuArgv(spec(), paths, "tcg");
    const drives = values(args, "-drive");
    assert.ok(drives.includes(`if=none,id=root,file=${paths.overlay},format=qcow2,discard=unmap`));
    assert.ok(drives.includes(`if=none,id=seed,file=${paths.seed},format=raw,readonly=on`));
    const devices = values(args, "-device");
    assert.ok(devices.includes("virtio-blk-pci,drive=root,bootindex=0"));
    assert.ok(devices.includes("virtio-blk-pci,drive=seed"));
    for (const flag of ["-nodefaults", "-no-user-config", "-no-shutdown"])
      assert.ok(args.includes(flag));
    assert.deepEqual(values(args, "-display"), ["none"]);
    assert.deepEqual(values(args, "-machine"), ["q35"]);
  });

  it("puts QMP and the console on sockets in the state dir, the console also logged to a file", () => {
    const { args } = buildQemuArgv(spec(), paths, "tcg");
    const chardevs = values(args, "-chardev");
    assert.ok(chardevs.includes(`socket,id=qmp,path=${paths.qmpSocket},server=on,wait=off`));
    assert.ok(
      chardevs.includes(
        `socket,id=console,path=${paths.consoleSocket},server=on,wait=off,logfile=${paths.consoleRaw},logappend=on`,
      ),
    );
    assert.deepEqual(values(args, "-serial"), ["chardev:console"]);
    assert.deepEqual(values(args, "-mon"), ["chardev=qmp,mode=control"]);
  });

  it("confines QEMU: a seccomp sandbox (no obsolete syscalls, no spawn, no resource control), run as the QEMU user", () => {
    const { args } = buildQemuArgv(spec(), paths, "tcg", { user: "vmlet-qemu" });
    const sandbox = values(args, "-sandbox");
    assert.equal(sandbox.length, 1);
    const settings = new Map(
      sandbox[0]!
        .split(",")
        .slice(1)
        .map((kv) => kv.split("=") as [string, string]),
    );
    assert.equal(sandbox[0]!.split(",")[0], "on");
    assert.equal(settings.get("obsolete"), "deny");
    assert.equal(settings.get("spawn"), "deny");
    assert.equal(settings.get("resourcecontrol"), "deny");
    assert.deepEqual(values(args, "-runas"), ["vmlet-qemu"]);
    // The debugging switch: neither.
    const relaxed = buildQemuArgv(spec(), paths, "tcg").args;
    assert.ok(!relaxed.includes("-sandbox") && !relaxed.includes("-runas"));
    assert.throws(
      () => buildQemuArgv(spec(), paths, "tcg", { user: "root,x" }),
      /vm c0ffee: build QEMU command: QEMU user "root,x": not a user name/,
    );
  });

  it("escapes commas in paths so a state dir cannot add QEMU options", () => {
    assert.equal(qemuOptValue("/a,b,,c"), "/a,,b,,,,c");
    const { args } = buildQemuArgv(spec(), vmPaths("/tmp/x,format=raw"), "tcg");
    assert.ok(
      values(args, "-drive").some((d) => d.includes("file=/tmp/x,,format=raw/root.qcow2,")),
    );
  });

  it("refuses a bad MAC, MTU, fd, size or id with a VmSpecError naming the VM and the NIC", () => {
    const bad: Partial<VmSpec>[] = [
      {
        taps: [{ ifname: "eth0", tap: "t", fd: 3, guestMac: "02:00:00:00:00:01,id=x", mtu: 1500 }],
      },
      { taps: [{ ifname: "eth0", tap: "t", fd: 3, guestMac: "02:00:00:00:00:01", mtu: 67 }] },
      { taps: [{ ifname: "eth0", tap: "t", fd: -1, guestMac: "02:00:00:00:00:01", mtu: 1500 }] },
      { vcpus: 0 },
      { memoryMiB: 1.5 },
      { id: "a,b" },
    ];
    for (const overrides of bad) {
      assert.throws(
        () => buildQemuArgv(spec(overrides), paths, "tcg"),
        (error: unknown) => {
          assert.ok(error instanceof VmSpecError);
          assert.match(error.message, /^vm .*: build QEMU command: /);
          return true;
        },
      );
    }
    assert.throws(
      () =>
        buildQemuArgv(
          spec({ taps: [{ ifname: "eth0", tap: "t", fd: 3, guestMac: "x", mtu: 1500 }] }),
          paths,
          "tcg",
        ),
      /vm c0ffee: build QEMU command: NIC 0 \(eth0\): MAC "x"/,
    );
  });
});
