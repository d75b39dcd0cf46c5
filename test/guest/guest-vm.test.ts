import assert from "node:assert/strict";
import type dgram from "node:dgram";
import { describe, it } from "node:test";
import { openBoundUdpSocket } from "../../src/sys/udp";
import { requirePrivateNamespace, run } from "../harness/fixtures";
import { makePodTap, type StandInServer, startStandInDhcpServer } from "../harness/guest-pod";
import { bootGuest, type GuestVm, guestImagesBuilt } from "../harness/guest-vm";

requirePrivateNamespace();

const skip = guestImagesBuilt() ? false : "test guests not built: run scripts/build-test-guests.sh";

interface Discover {
  mac: string;
  at: number;
}

/** Resolves with the first DHCPDISCOVER (op 1, option 53 = 1) from `mac` on the socket. */
function nextDiscover(socket: dgram.Socket, mac: string, timeoutMs: number): Promise<Discover> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off("message", onMessage);
      reject(new Error(`no DHCPDISCOVER from ${mac} within ${timeoutMs} ms`));
    }, timeoutMs);
    function onMessage(msg: Buffer) {
      if (msg.length < 240 || msg[0] !== 1 || msg.readUInt32BE(236) !== 0x63825363) return;
      const chaddr = [...msg.subarray(28, 34)]
        .map((b) => b.toString(16).padStart(2, "0"))
        .join(":");
      let type = 0;
      for (let i = 240; i < msg.length; ) {
        const code = msg[i];
        if (code === 0) {
          i++;
          continue;
        }
        if (code === 255 || i + 1 >= msg.length) break;
        if (code === 53) type = msg[i + 2];
        i += 2 + msg[i + 1];
      }
      if (chaddr === mac && type === 1) {
        clearTimeout(timer);
        socket.off("message", onMessage);
        resolve({ mac: chaddr, at: performance.now() });
      }
    }
    socket.on("message", onMessage);
  });
}

async function bootToLease(boot: "kernel" | "disk", mac: string): Promise<void> {
  const pod = makePodTap({ address: "10.40.0.1/24" });
  let vm: GuestVm | undefined;
  let server: StandInServer | undefined;
  let socket: dgram.Socket | undefined;
  try {
    // A socket on the pod bridge sees the guest's DISCOVER (next to the stand-in server).
    socket = await openBoundUdpSocket(pod.nsPath, { device: pod.bridge, port: 67 });
    server = await startStandInDhcpServer(pod.netns, pod.bridge, {
      start: "10.40.0.7",
      subnet: "255.255.255.0",
      router: "10.40.0.1",
      dns: ["10.40.0.53", "10.40.0.54"],
      domain: "guest.test",
      mtu: 1450,
      extra: ["option staticroutes 10.99.0.0/16 10.40.0.1"],
    });
    const discover = nextDiscover(socket, mac, 60_000);
    const t0 = performance.now();
    vm = bootGuest({
      tapFd: pod.tapFd,
      mac,
      boot,
      udhcpcArgs: boot === "kernel" ? ["-O", "staticroutes"] : undefined,
    });
    const d = await discover;
    socket.close();
    socket = undefined;
    const nic = await vm.waitForReport("nic");
    assert.equal(nic.fields.mac, mac, "the guest NIC has the MAC given to QEMU");

    const lease = await vm.waitForLease({ timeoutMs: 60_000 });
    process.stderr.write(
      `# ${boot} boot: first DISCOVER ${Math.round(d.at - t0)} ms, lease ${Math.round(lease.at)} ms after spawn (guest uptime ${lease.uptime} s)\n`,
    );
    assert.equal(lease.event, "bound");
    assert.equal(lease.cidr, "10.40.0.7/24");
    assert.equal(lease.mtu, 1450, "option 26 applied to eth0");
    assert.ok(lease.routes.includes("default via 10.40.0.1 dev eth0"), String(lease.routes));
    assert.deepEqual(lease.dns, ["10.40.0.53", "10.40.0.54"]);
    assert.equal(lease.domain, "guest.test");
    assert.equal(lease.dhcp.serverid, "10.40.0.1");
    if (boot === "kernel") {
      assert.equal(lease.dhcp.staticroutes, "10.99.0.0/16 10.40.0.1", "udhcpcArgs reach udhcpc");
      assert.ok(!lease.routes.some((r) => r.startsWith("10.99.")), "the stock script ignores 121");
    }

    // Traffic both ways, a renew and a rebind.
    const ping = await vm.run("ping -c 2 -W 2 10.40.0.1");
    assert.equal(ping.rc, 0, ping.output.join("\n"));
    assert.ok(
      ping.output.some((l) => /2 packets received/.test(l)),
      ping.output.join("\n"),
    );
    run(pod.netns, "ping", "-c", "2", "-i", "0.2", "-W", "2", "10.40.0.7");
    const renewed = await vm.renew();
    assert.equal(renewed.event, "renew");
    assert.equal(renewed.cidr, "10.40.0.7/24");
    const rebound = await vm.rebind();
    assert.equal(rebound.event, "renew", "udhcpc runs the script with renew after a rebind ACK");
    assert.equal(rebound.cidr, "10.40.0.7/24");
    const status = await vm.status();
    assert.equal(status.cidr, "10.40.0.7/24");
    assert.ok(status.routes.includes("default via 10.40.0.1 dev eth0"), String(status.routes));
  } finally {
    socket?.close();
    await vm?.stop();
    await server?.stop();
    pod.remove();
  }
  if (vm) assert.throws(() => process.kill(vm!.pid, 0), /ESRCH/, "QEMU is gone after stop()");
}

describe("tiny test VM (TCG)", { skip }, () => {
  it("boots from kernel + initrd: DISCOVER from its MAC on the pod bridge, then a lease, ping, renew", () =>
    bootToLease("kernel", "52:54:00:cc:dd:01"));

  it("boots from the qcow2 disk on virtio-blk the same way", () =>
    bootToLease("disk", "52:54:00:cc:dd:02"));

  it("runs console commands and reports their exit codes; host_mtu reaches the NIC", async () => {
    const pod = makePodTap();
    const vm = bootGuest({ tapFd: pod.tapFd, mac: "52:54:00:cc:dd:03", hostMtu: 1400 });
    try {
      await vm.waitForReport("ready");
      const nic = await vm.waitForReport("nic");
      assert.equal(nic.fields.mtu, "1400", "virtio-net host_mtu sets the guest MTU without DHCP");
      const ok = await vm.run("cat /sys/class/net/eth0/address");
      assert.deepEqual(ok, { rc: 0, output: ["52:54:00:cc:dd:03"] });
      const bad = await vm.run("exit 3");
      assert.equal(bad.rc, 3);
    } finally {
      await vm.stop();
      pod.remove();
    }
  });
});
