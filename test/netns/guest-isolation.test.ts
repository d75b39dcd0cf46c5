// Guest isolation on the pod network, tried as a hostile guest would: frames written to
// the pod's tap (as a guest root on its NIC can), captured where they would land on the
// node (the host end of the pod's veth, tcpdump). A guest sends only as its own MAC and
// addresses, its DHCP stays in its pod, and nothing it writes makes the pod netns speak.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import type { PodRef } from "../../src/cni-bridge/cni";
import { BOOTREQUEST, formatMessage, MessageType, Option, u8 } from "../../src/dhcp/codec";
import { Tapmanager } from "../../src/tapmanager";
import type { OpenedTap, PodNetwork } from "../../src/tapmanager/types";
import { makePod } from "../harness/cni-fixtures";
import { ip as ipCmd, ipIn, requirePrivateNamespace, run } from "../harness/fixtures";
import {
  arp,
  BROADCAST_MAC,
  type Capture,
  describeFrame,
  ethernet,
  hopByHop,
  ipv4,
  ipv6,
  routerAdvert,
  startCapture,
  udp,
  withVnetHeader,
} from "../harness/frames";
import { startDhcpClient } from "../harness/guest-clients";
import { NETWORK_STYLES, type NetworkStyle } from "../harness/network-styles";
import { makePodNode, type PodNode, removePodNode } from "../harness/pod-node";
import { startRelay } from "../harness/relay";

requirePrivateNamespace();

const STYLES = NETWORK_STYLES;

/** A pod node whose tapmanager's info lines are kept, for the drop counts it logs. */
interface Node extends PodNode {
  logged: { fields: Record<string, unknown>; message: string }[];
}

async function makeNode(style: NetworkStyle): Promise<Node> {
  const logged: Node["logged"] = [];
  const log = {
    info: (fields: object, message: string) =>
      logged.push({ fields: fields as Record<string, unknown>, message }),
    warn() {},
    debug() {},
  };
  return { ...(await makePodNode({ ...style, log })), logged };
}

const removeNode = removePodNode;

/** The node's end of the pod's veth: where whatever leaves the pod lands. */
function nodeEndOf(network: PodNetwork): string {
  const ns = path.basename(network.netnsPath);
  const [eth0] = JSON.parse(ipIn(ns, "-j", "link", "show", network.interfaces[0].ifname)) as {
    link_index: number;
  }[];
  const links = JSON.parse(ipCmd("-j", "link", "show")) as { ifindex: number; ifname: string }[];
  const peer = links.find((l) => l.ifindex === eth0.link_index);
  assert.ok(peer, `the node end of ${network.interfaces[0].ifname} (index ${eth0.link_index})`);
  return peer.ifname;
}

interface VmPod {
  pod: PodRef;
  network: PodNetwork;
  tap: OpenedTap;
  leaseIp: string;
  nodeEnd: string;
  netns: string;
}

async function setUpPod(node: Node, extra: Parameters<Tapmanager["setUp"]>[0] | object = {}) {
  const pod = makePod();
  const network = await node.tapmanager.setUp({ pod, ...extra });
  const [tap] = node.tapmanager.openTaps(pod.sandboxId);
  const leaseIp = network.interfaces[0].addresses.find((a) => a.family === 4)!.address;
  const vm: VmPod = {
    pod,
    network,
    tap,
    leaseIp,
    nodeEnd: nodeEndOf(network),
    netns: path.basename(network.netnsPath),
  };
  return vm;
}

async function tearDownPod(node: Node, vm: VmPod): Promise<void> {
  try {
    fs.closeSync(vm.tap.fd);
  } catch {}
  await node.tapmanager.tearDown(vm.pod.sandboxId);
}

function write(vm: VmPod, frame: Buffer): void {
  fs.writeSync(vm.tap.fd, withVnetHeader(frame));
}

function dhcpMessage(type: number, mac: string, ciaddr?: string): Buffer {
  return formatMessage(
    {
      op: BOOTREQUEST,
      xid: 0x0bad0bad,
      flags: 0,
      ...(ciaddr ? { ciaddr } : {}),
      chaddr: Buffer.from(mac.replaceAll(":", ""), "hex"),
    },
    [[Option.MESSAGE_TYPE, u8(type)]],
  ).datagram;
}

/** A legitimate frame from the guest, last in a batch: once it is seen, the batch has passed. */
function marker(vm: VmPod, style: NetworkStyle, n: number): Buffer {
  return ethernet(
    BROADCAST_MAC,
    vm.tap.guestMac,
    0x0800,
    ipv4(vm.leaseIp, style.gateway, 17, udp(40001, 40001, `vmlet-marker-${n}`)),
  );
}

async function sendAndCapture(vm: VmPod, frames: Buffer[], last: Buffer): Promise<Buffer[]> {
  const capture = await startCapture(vm.nodeEnd);
  try {
    for (const f of frames) write(vm, f);
    write(vm, last);
    await capture.waitFor("marker", (f) => f.equals(last));
    // Anything the pod netns would send in answer (an ARP request) has had its chance.
    await new Promise((r) => setTimeout(r, 1500));
    return capture.frames();
  } finally {
    await capture.stop();
  }
}

for (const style of STYLES) {
  describe(`a hostile guest on a ${style.name} network`, () => {
    let node: Node;
    before(async () => {
      node = await makeNode(style);
    });
    after(async () => {
      await removeNode(node);
    });

    it("frames with another pod's IP, a foreign MAC, an ARP reply for the gateway, a DHCP OFFER, an RA, and a DISCOVER with a foreign ciaddr reach nothing on the node; the node sees no ARP request from the pod", async () => {
      const vm = await setUpPod(node);
      try {
        const guest = vm.tap.guestMac;
        const gw = style.gateway;
        const foreignCiaddr = vm.leaseIp.replace(/\.\d+$/, ".77");
        const ll = "fe80::5054:ff:fe00:1";
        const hostile: [string, Buffer][] = [
          [
            "IPv4 from another pod's IP",
            ethernet(BROADCAST_MAC, guest, 0x0800, ipv4(node.other.ip, gw, 17, udp(9, 9, "x"))),
          ],
          [
            "a foreign source MAC",
            ethernet(
              BROADCAST_MAC,
              "02:66:66:66:66:66",
              0x0800,
              ipv4(vm.leaseIp, gw, 17, udp(9, 9, "x")),
            ),
          ],
          [
            "an ARP reply for the gateway",
            ethernet(BROADCAST_MAC, guest, 0x0806, arp(2, guest, gw, BROADCAST_MAC, gw)),
          ],
          [
            "an ARP request as another pod",
            ethernet(
              BROADCAST_MAC,
              guest,
              0x0806,
              arp(1, guest, node.other.ip, "00:00:00:00:00:00", gw),
            ),
          ],
          [
            "an ARP reply with a foreign sender MAC",
            ethernet(
              BROADCAST_MAC,
              guest,
              0x0806,
              arp(2, "02:66:66:66:66:66", vm.leaseIp, BROADCAST_MAC, gw),
            ),
          ],
          [
            "a DHCP OFFER",
            ethernet(
              BROADCAST_MAC,
              guest,
              0x0800,
              ipv4(
                vm.leaseIp,
                "255.255.255.255",
                17,
                udp(67, 68, dhcpMessage(MessageType.OFFER, guest)),
              ),
            ),
          ],
          [
            "an RA",
            ethernet("33:33:00:00:00:01", guest, 0x86dd, ipv6(ll, "ff02::1", 58, routerAdvert())),
          ],
          [
            "an RA behind a hop-by-hop header",
            ethernet(
              "33:33:00:00:00:01",
              guest,
              0x86dd,
              ipv6(ll, "ff02::1", 0, hopByHop(58, routerAdvert())),
            ),
          ],
          [
            "a DHCPv6 reply",
            ethernet(
              "33:33:00:01:00:02",
              guest,
              0x86dd,
              ipv6(ll, "ff02::1:2", 17, udp(547, 546, "x")),
            ),
          ],
          [
            "IPv6 from a global address not its own",
            ethernet(
              "33:33:00:00:00:01",
              guest,
              0x86dd,
              ipv6("2001:db8::5", "ff02::1", 17, udp(9, 9, "x")),
            ),
          ],
          [
            "a VLAN-tagged frame",
            ethernet(
              BROADCAST_MAC,
              guest,
              0x8100,
              Buffer.from([0, 5, 8, 0, ...ipv4(vm.leaseIp, gw, 17, udp(9, 9, "x"))]),
            ),
          ],
          [
            "a DISCOVER with a foreign ciaddr",
            ethernet(
              BROADCAST_MAC,
              guest,
              0x0800,
              ipv4(
                "0.0.0.0",
                "255.255.255.255",
                17,
                udp(68, 67, dhcpMessage(MessageType.DISCOVER, guest, foreignCiaddr)),
              ),
            ),
          ],
        ];
        const repliedBefore = node.tapmanager.dhcpStats(vm.pod.sandboxId)[0].replied;
        const last = marker(vm, style, 1);
        const seen = await sendAndCapture(
          vm,
          hostile.map(([, f]) => f),
          last,
        );
        assert.deepEqual(
          seen.map(describeFrame),
          [describeFrame(last)],
          `only the legitimate marker reached the node; hostile frames were: ${hostile.map(([n]) => n).join(", ")}`,
        );
        assert.ok(
          !seen.some((f) => f.readUInt16BE(12) === 0x0806),
          "the node sees no ARP request from the pod",
        );
        assert.ok(
          node.tapmanager.dhcpStats(vm.pod.sandboxId)[0].replied > repliedBefore,
          "the DISCOVER was answered (to the lease, inside the pod)",
        );
        assert.equal(
          ipIn(vm.netns, "neigh", "show", foreignCiaddr).trim(),
          "",
          "the pod netns never looked up the foreign ciaddr",
        );
        const drops = node.tapmanager.dropCounts(vm.pod.sandboxId)!.total;
        assert.equal(drops["source-mac"], 1, JSON.stringify(drops));
        assert.equal(drops["ipv4-source"], 1, JSON.stringify(drops));
        assert.equal(drops["arp-spoof"], 3, JSON.stringify(drops));
        assert.equal(drops["dhcp-server"], 2, JSON.stringify(drops));
        assert.equal(drops["router-advert"], 2, JSON.stringify(drops));
        assert.equal(drops["ipv6-source"], 1, JSON.stringify(drops));
        assert.equal(drops.ethertype, 1, JSON.stringify(drops));
        await tearDownPod(node, vm);
        const line = node.logged.find(
          (l) => l.message === "guest isolation drops" && l.fields.sandboxId === vm.pod.sandboxId,
        );
        const logged = (line?.fields.drops as { total: typeof drops } | undefined)?.total;
        assert.deepEqual(
          {
            mac: logged?.["source-mac"],
            arp: logged?.["arp-spoof"],
            ra: logged?.["router-advert"],
          },
          { mac: 1, arp: 3, ra: 2 },
          "the teardown logs the pod's drops",
        );
      } finally {
        await tearDownPod(node, vm);
      }
    });

    it("the legitimate guest (dhcpcd) gets its lease through the guard, ARP-probes, does DAD, pings both ways and renews", async () => {
      const vm = await setUpPod(node);
      const capture = await startCapture(vm.nodeEnd);
      const guest = await startRelay({ podTapFd: vm.tap.fd, mac: vm.tap.guestMac });
      const client = await startDhcpClient("dhcpcd", { netns: guest.netns, ifname: guest.ifname });
      try {
        const state = await client.waitForLease({ timeoutMs: 30_000 });
        assert.equal(state.addresses[0].split("/")[0], vm.leaseIp);
        if (style.gatewayAnswersPing) run(guest.netns, "ping", "-c", "1", "-W", "3", style.gateway);
        run(guest.netns, "ping", "-c", "1", "-W", "3", node.other.ip);
        run(node.other.ns.name, "ping", "-c", "1", "-W", "3", vm.leaseIp);
        const renewed = await client.renew(30_000);
        assert.equal(renewed.addresses[0].split("/")[0], vm.leaseIp);
        const guestMac = Buffer.from(vm.tap.guestMac.replaceAll(":", ""), "hex");
        await capture.waitFor(
          "ARP probe (sender 0.0.0.0, the guest MAC)",
          (f) =>
            f.readUInt16BE(12) === 0x0806 &&
            f.subarray(22, 28).equals(guestMac) &&
            f.readUInt32BE(28) === 0 &&
            f.subarray(38, 42).join(".") === vm.leaseIp,
        );
        if (ipIn(guest.netns, "-6", "addr", "show", "dev", guest.ifname).includes("fe80::")) {
          await capture.waitFor(
            "DAD neighbour solicitation from ::",
            (f) =>
              f.readUInt16BE(12) === 0x86dd &&
              f.subarray(22, 38).equals(Buffer.alloc(16)) &&
              f[20] === 58 &&
              f[54] === 135,
          );
        }
        const drops = node.tapmanager.dropCounts(vm.pod.sandboxId)!.total;
        for (const reason of [
          "source-mac",
          "ipv4-source",
          "arp-spoof",
          "ipv6-source",
          "ethertype",
        ]) {
          assert.equal(
            drops[reason as keyof typeof drops],
            undefined,
            `${reason}: ${JSON.stringify(drops)}`,
          );
        }
        assert.ok(
          capture
            .frames()
            .every(
              (f) =>
                !(
                  f.readUInt16BE(12) === 0x0800 &&
                  f[23] === 17 &&
                  [67, 68].includes(f.readUInt16BE(36))
                ),
            ),
          "no DHCP reached the node",
        );
      } finally {
        await client.stop();
        await guest.stop();
        await capture.stop();
        await tearDownPod(node, vm);
      }
    });
  });
}

describe("guest isolation across a restart of vmlet (Flannel-style)", () => {
  it("keeps guarding while vmlet is down, and a restarted tapmanager takes the counters up again", async () => {
    const node = await makeNode(STYLES[0]);
    const vm = await setUpPod(node);
    let restarted: Tapmanager | undefined;
    try {
      const spoofed = ethernet(
        BROADCAST_MAC,
        vm.tap.guestMac,
        0x0800,
        ipv4(node.other.ip, STYLES[0].gateway, 17, udp(9, 9, "x")),
      );
      await node.tapmanager.close(); // vmlet stops; the VM (here, the tap fd) runs on
      const last = marker(vm, STYLES[0], 3);
      const seen = await sendAndCapture(vm, [spoofed], last);
      assert.deepEqual(seen.map(describeFrame), [describeFrame(last)], "still dropped");

      restarted = new Tapmanager({
        cni: node.cni.client(),
        stateDir: path.join(node.cni.root, "pods"),
      });
      const outcome = await restarted.recover();
      assert.deepEqual(outcome.recovered, [vm.pod.sandboxId]);
      const again = await sendAndCapture(vm, [spoofed], marker(vm, STYLES[0], 4));
      assert.equal(again.length, 1, again.map(describeFrame).join("\n"));
      assert.equal(restarted.dropCounts(vm.pod.sandboxId)?.total["ipv4-source"], 1);
    } finally {
      fs.closeSync(vm.tap.fd);
      await (restarted ?? node.tapmanager).tearDown(vm.pod.sandboxId);
      await restarted?.close();
      await removeNode(node);
    }
  });
});

describe("a neighbour pod on the node bridge (Flannel-style)", () => {
  let node: Node;
  before(async () => {
    node = await makeNode(STYLES[0]);
  });
  after(async () => {
    await removeNode(node);
  });

  /** A child in the neighbour's netns sending DISCOVERs for `mac` (from port 68), `count` of them. */
  function discoverFlood(mac: string, count: number, listenMs: number): ChildProcess {
    const discover = dhcpMessage(MessageType.DISCOVER, mac).toString("base64");
    const script = `
      const s = require("dgram").createSocket({ type: "udp4", reuseAddr: true });
      let replies = 0;
      s.on("message", () => replies++);
      s.bind(68, () => {
        s.setBroadcast(true);
        const m = Buffer.from(process.argv[1], "base64");
        let sent = 0;
        const burst = () => {
          for (let i = 0; i < 50 && sent < ${count}; i++, sent++) s.send(m, 67, "255.255.255.255");
          if (sent < ${count}) setTimeout(burst, 5);
          else setTimeout(() => { process.stdout.write(JSON.stringify({ sent, replies })); s.close(); }, ${listenMs});
        };
        burst();
      });`;
    return spawn(
      "ip",
      ["netns", "exec", node.other.ns.name, process.execPath, "-e", script, discover],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
  }

  function result(child: ChildProcess): Promise<{ sent: number; replies: number }> {
    let out = "";
    child.stdout!.on("data", (d) => {
      out += d;
    });
    return new Promise((resolve, reject) =>
      child.on("exit", (code) =>
        code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`flood exited ${code}`)),
      ),
    );
  }

  it("cannot get an answer from, nor starve, the VM pod's DHCP server, and cannot see its DHCP traffic", async () => {
    const vm = await setUpPod(node);
    let sniff: Capture | undefined;
    try {
      // One DISCOVER with the VM's MAC: nothing comes back.
      const single = await result(discoverFlood(vm.tap.guestMac, 1, 1500));
      assert.deepEqual(single, { sent: 1, replies: 0 });
      assert.equal(
        node.tapmanager.dhcpStats(vm.pod.sandboxId)[0].received,
        0,
        "the server never saw it",
      );

      // A flood while the real guest asks: the guest is served at once, the flood never counted.
      sniff = await startCapture("eth0", {
        netns: node.other.ns.name,
        filter: "udp port 67 or udp port 68",
      });
      const flood = discoverFlood(vm.tap.guestMac, 3000, 500);
      const floodDone = result(flood);
      const guest = await startRelay({ podTapFd: vm.tap.fd, mac: vm.tap.guestMac });
      const client = await startDhcpClient("udhcpc", { netns: guest.netns, ifname: guest.ifname });
      try {
        const state = await client.waitForLease({ timeoutMs: 15_000 });
        assert.equal(state.addresses[0].split("/")[0], vm.leaseIp);
        const renewed = await client.renew(15_000);
        assert.equal(renewed.addresses[0].split("/")[0], vm.leaseIp);
      } finally {
        await client.stop();
        await guest.stop();
      }
      const flooded = await floodDone;
      assert.equal(flooded.replies, 0, "no reply to the neighbour");
      const stats = node.tapmanager.dhcpStats(vm.pod.sandboxId)[0];
      assert.equal(stats.dropped["rate-limited"], undefined, JSON.stringify(stats));
      assert.ok(
        stats.received < 20,
        `only the guest's messages reached the server: ${JSON.stringify(stats)}`,
      );
      const drops = node.tapmanager.dropCounts(vm.pod.sandboxId)!.total;
      assert.ok((drops["dhcp-from-node"] ?? 0) >= 3000, JSON.stringify(drops));
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(
        sniff.frames().map(describeFrame),
        [],
        "the neighbour saw none of the guest's DHCP (nor the server's)",
      );
    } finally {
      await sniff?.stop();
      await tearDownPod(node, vm);
    }
  });
});

describe("vmlet.io/allowed-source-prefixes (Flannel-style)", () => {
  let node: Node;
  before(async () => {
    node = await makeNode(STYLES[0]);
  });
  after(async () => {
    await removeNode(node);
  });

  it("with an extra prefix allowed, the guest can send from it and from nothing else beyond its own address", async () => {
    const vm = await setUpPod(node, {
      allowedSourcePrefixes: [
        { family: 4, address: "10.250.0.0", prefixLength: 24 },
        { family: 6, address: "fd00:99::", prefixLength: 64 },
      ],
    });
    try {
      const g = vm.tap.guestMac;
      const gw = STYLES[0].gateway;
      const v4 = (src: string) =>
        ethernet(BROADCAST_MAC, g, 0x0800, ipv4(src, gw, 17, udp(9, 9, src)));
      const v6 = (src: string) =>
        ethernet("33:33:00:00:00:01", g, 0x86dd, ipv6(src, "ff02::1", 17, udp(9, 9, src)));
      const allowed = [
        v4("10.250.0.7"),
        v4(vm.leaseIp),
        v6("fd00:99::5"),
        ethernet(BROADCAST_MAC, g, 0x0806, arp(1, g, "10.250.0.7", "00:00:00:00:00:00", gw)),
      ];
      const refused = [v4("10.250.1.7"), v4("10.251.0.7"), v6("fd00:98::5"), v6("fd00:9a::5")];
      const last = marker(vm, STYLES[0], 2);
      const seen = await sendAndCapture(vm, [...allowed, ...refused], last);
      assert.deepEqual(seen.map(describeFrame), [...allowed, last].map(describeFrame));
      const drops = node.tapmanager.dropCounts(vm.pod.sandboxId)!.total;
      assert.deepEqual(
        { v4: drops["ipv4-source"], v6: drops["ipv6-source"] },
        { v4: 2, v6: 2 },
        JSON.stringify(drops),
      );
    } finally {
      await tearDownPod(node, vm);
    }
  });
});
