import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import readline from "node:readline";
import { describe, it } from "node:test";
import {
  allocations,
  bridgeList,
  type CniSandbox,
  DEBIAN_CNI_DIR,
  makeCniSandbox,
} from "../harness/cni-fixtures";
import { ip, requirePrivateNamespace } from "../harness/fixtures";
import { guestImages, guestImagesBuilt } from "../harness/guest-vm";

requirePrivateNamespace();

const VMLET = path.join(__dirname, "../../src/cli/main.js");

/** The flags that point a run at a CNI sandbox: its confs, Debian's plugins, a state dir. */
function onSandbox(cni: CniSandbox): string[] {
  return [
    "--conf-dir",
    cni.confDir,
    "--bin-dir",
    DEBIAN_CNI_DIR,
    "--state-dir",
    path.join(cni.root, "state"),
  ];
}

function netRun(args: string[]) {
  const child = spawn(process.execPath, [VMLET, "net", "run", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => {
    stderr += d;
  });
  const lines = readline.createInterface({ input: child.stdout });
  const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
  return { child, lines, exited, stderr: () => stderr };
}

describe("vmlet net run", () => {
  it("prints each pod's network as JSON, and tears everything down on SIGTERM", async () => {
    const cni = makeCniSandbox();
    cni.writeConf("10-br.conflist", bridgeList("br", "1.0.0", cni.dataDir, "10.99.0.0/24"));
    const run = netRun([...onSandbox(cni), "--pod", "default/vm1", "--pod", "default/vm2"]);
    try {
      const it = run.lines[Symbol.asyncIterator]();
      const first = JSON.parse((await it.next()).value);
      const second = JSON.parse((await it.next()).value);
      assert.equal(first.pod, "default/vm1");
      assert.equal(second.pod, "default/vm2");
      const eth0 = first.interfaces[0];
      assert.equal(eth0.ifname, "eth0");
      assert.match(eth0.tap, /^tap-eth0$/);
      assert.match(eth0.mac, /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
      assert.equal(eth0.mtu, 1500);
      assert.match(eth0.addresses[0], /^10\.99\.0\.\d+\/24$/);
      assert.equal(eth0.gateway, "10.99.0.1");
      assert.deepEqual(eth0.routes, [{ dst: "0.0.0.0/0", gateway: "10.99.0.1" }]);
      assert.ok(ip("netns", "list").includes(path.basename(first.netns)));
      assert.equal(allocations(cni.dataDir, "br").length, 2);
      // A second run on the same state dir would tear these pods down as leftovers.
      const rival = netRun(["--state-dir", path.join(cni.root, "state"), "--pod", "default/x"]);
      assert.equal(await rival.exited, 1);
      assert.match(rival.stderr(), /--state-dir .*: in use by vmlet net run \(pid \d+\)/);
      assert.equal(allocations(cni.dataDir, "br").length, 2, "the live run's pods are untouched");
      run.child.kill("SIGTERM");
      assert.equal(await run.exited, 0, run.stderr());
      assert.ok(!ip("netns", "list").includes(path.basename(first.netns)));
      assert.deepEqual(allocations(cni.dataDir, "br"), []);
    } finally {
      run.child.kill("SIGKILL");
      cni.remove();
    }
  });

  it("runs --exec with the taps as fds and exits with its status after tearing down", async () => {
    const cni = makeCniSandbox();
    cni.writeConf("10-br.conflist", bridgeList("br", "1.0.0", cni.dataDir, "10.98.0.0/24"));
    const script =
      'echo "fds=$VMLET_TAP_FDS macs=$VMLET_MACS mtus=$VMLET_MTUS fd3=$(readlink /proc/self/fd/3)"; exit 7';
    const run = netRun([...onSandbox(cni), "--pod", "default/vm1", "--exec", script]);
    try {
      const out: string[] = [];
      for await (const line of run.lines) out.push(line);
      assert.equal(await run.exited, 7, run.stderr());
      const pod = JSON.parse(out[0]);
      assert.equal(out[1], `fds=3 macs=${pod.interfaces[0].mac} mtus=1500 fd3=/dev/net/tun`);
      assert.deepEqual(allocations(cni.dataDir, "br"), []);
      assert.ok(!ip("netns", "list").includes(path.basename(pod.netns)));
    } finally {
      cni.remove();
    }
  });

  it("prints each pod's guest isolation drops as JSON at teardown", async () => {
    const cni = makeCniSandbox();
    cni.writeConf("10-br.conflist", bridgeList("br", "1.0.0", cni.dataDir, "10.97.0.0/24"));
    // Through the tap (fd 3): two frames from a MAC that is not the guest's, one ARP reply
    // claiming the gateway; each behind the tap's zero virtio-net header.
    const write = `
      const fs = require("fs");
      const mac = Buffer.from(process.env.VMLET_MACS.replaceAll(":", ""), "hex");
      const foreign = Buffer.from("026666666666", "hex");
      const head = (src, type) => Buffer.concat([Buffer.alloc(10), Buffer.alloc(6, 0xff), src, Buffer.from(type, "hex")]);
      const ip = Buffer.alloc(28); ip[0] = 0x45;
      fs.writeSync(3, Buffer.concat([head(foreign, "0800"), ip]));
      fs.writeSync(3, Buffer.concat([head(foreign, "0800"), ip]));
      const arp = Buffer.concat([Buffer.from("0001080006040002", "hex"), mac, Buffer.from([10, 97, 0, 1]), Buffer.alloc(10)]);
      fs.writeSync(3, Buffer.concat([head(mac, "0806"), arp]));`;
    const run = netRun([
      ...onSandbox(cni),
      "--pod",
      "default/vm1",
      "--exec",
      `${process.execPath} -e '${write}'; sleep 0.2`,
    ]);
    try {
      const out: string[] = [];
      for await (const line of run.lines) out.push(line);
      assert.equal(await run.exited, 0, run.stderr());
      const drops = JSON.parse(out.at(-1)!);
      assert.equal(drops.pod, "default/vm1");
      // (netns-source may count too: the pod bridge's own IPv6 link-local chatter.)
      assert.deepEqual(
        { mac: drops.drops["source-mac"], arp: drops.drops["arp-spoof"] },
        { mac: 2, arp: 1 },
      );
      assert.deepEqual(drops.interfaces, [{ ifname: "eth0", drops: drops.drops }]);
    } finally {
      cni.remove();
    }
  });

  it("boots README's QEMU example on the first of two pod networks: taps as fds 3, 4, and the guest takes its lease", {
    skip: !guestImagesBuilt() && "test guests not built",
    timeout: 180_000,
  }, async () => {
    const cni = makeCniSandbox();
    cni.writeConf("10-a.conflist", bridgeList("neta", "1.0.0", cni.dataDir, "10.96.10.0/24"));
    cni.writeConf("20-b.conflist", bridgeList("netb", "1.0.0", cni.dataDir, "10.96.20.0/24"));
    const { kernel, initrd } = guestImages();
    const console = path.join(cni.root, "console.log");
    // README's command, with the serial console in a file; it ends once the lease is seen.
    const script = `
      echo "fds=$VMLET_TAP_FDS mtus=$VMLET_MTUS fd4=$(readlink /proc/self/fd/4)"
      qemu-system-x86_64 -accel tcg -m 256 -nodefaults -no-user-config -display none \
        -serial file:${console} -kernel ${kernel} -initrd ${initrd} \
        -append "console=ttyS0 quiet panic=-1" \
        -netdev tap,id=n0,fd=3 -device virtio-net-pci,netdev=n0,mac=\${VMLET_MACS%%,*},romfile= &
      qemu=$!
      for i in $(seq 600); do grep -q 'lease event="bound"' ${console} 2>/dev/null && break; sleep 0.2; done
      kill $qemu; wait $qemu
      grep -o 'lease event="bound".* ip="[^"]*"' ${console}`;
    const run = netRun([
      ...onSandbox(cni),
      "--network",
      "neta",
      "--network",
      "netb",
      "--pod",
      "default/vm1",
      "--exec",
      script,
    ]);
    try {
      const out: string[] = [];
      for await (const line of run.lines) out.push(line);
      assert.equal(await run.exited, 0, `${out.join("\n")}\n${run.stderr()}`);
      const pod = JSON.parse(out[0]!);
      assert.deepEqual(
        pod.interfaces.map((i: { ifname: string }) => i.ifname),
        ["eth0", "net1"],
      );
      assert.equal(out[1], "fds=3,4 mtus=1500,1500 fd4=/dev/net/tun");
      assert.match(out[2]!, new RegExp(`ip="${pod.interfaces[0].addresses[0]}"$`));
      assert.deepEqual(allocations(cni.dataDir, "neta"), []);
      assert.deepEqual(allocations(cni.dataDir, "netb"), []);
    } finally {
      run.child.kill("SIGKILL");
      cni.remove();
    }
  });

  it("names the flag when the input is bad", async () => {
    const run = netRun(["--pod", "Not/Valid_Name"]);
    assert.equal(await run.exited, 1);
    assert.match(run.stderr(), /--pod "Not\/Valid_Name": expected NAMESPACE\/NAME/);
  });
});
