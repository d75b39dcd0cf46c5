import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Tapmanager } from "../../src/tapmanager";
import { calicoPluginInto } from "../harness/calico-plugin";
import {
  allocations,
  bridgeList,
  type CniSandbox,
  makeCniSandbox,
  makePod,
  ptpList,
} from "../harness/cni-fixtures";
import { ip, ipIn, linksIn, requirePrivateNamespace } from "../harness/fixtures";

requirePrivateNamespace();

function netnsNames(): string[] {
  return ip("netns", "list")
    .split("\n")
    .filter(Boolean)
    .map((l) => l.split(" ")[0]);
}

describe("tapmanager on a Flannel-style bridge network", () => {
  let cni: CniSandbox;
  let tm: Tapmanager;
  before(() => {
    cni = makeCniSandbox();
    const list = bridgeList("flannel", "1.0.0", cni.dataDir, "10.244.1.0/24");
    (list.plugins[0] as Record<string, unknown>).mtu = 1450;
    cni.writeConf("10-flannel.conflist", list);
    tm = new Tapmanager({ cni: cni.client(), stateDir: path.join(cni.root, "pods") });
  });
  after(async () => {
    await tm.close();
    cni.remove();
  });

  it("rewires the veth into a bridge with a tap, and the guest gets the veth's MAC and address", async () => {
    const pod = makePod();
    const network = await tm.setUp({ pod });
    try {
      const ns = path.basename(network.netnsPath);
      assert.equal(network.interfaces.length, 1);
      const eth0 = network.interfaces[0];
      assert.deepEqual(
        eth0.addresses.filter((a) => a.family === 4).map((a) => a.prefixLength),
        [24],
      );
      assert.match(eth0.addresses[0].address, /^10\.244\.1\.\d+$/);
      assert.equal(eth0.gateway, "10.244.1.1");
      assert.equal(eth0.mtu, 1450);
      const links = linksIn(ns);
      const byName = Object.fromEntries(links.map((l) => [l.ifname, l]));
      assert.equal(byName.eth0.master, eth0.bridge);
      assert.equal(byName[eth0.tap].master, eth0.bridge);
      assert.equal(byName[eth0.tap].mtu, 1450);
      assert.equal(byName[eth0.bridge].mtu, 1450);
      assert.notEqual(byName.eth0.address, eth0.guestMac, "the veth gave its MAC to the guest");
      assert.match(ipIn(ns, "-d", "link", "show", eth0.tap), /tun type tap .*vnet_hdr on/s);
      // The pod's address lives in the guest now, not on the veth.
      assert.doesNotMatch(ipIn(ns, "-4", "addr", "show", "dev", "eth0"), /10\.244\.1\./);
      assert.deepEqual(tm.get(pod.sandboxId), network);
    } finally {
      await tm.tearDown(pod.sandboxId);
    }
  });

  it("leaves no netns, IPAM allocation, link or state after tearDown, and tearDown again succeeds", async () => {
    const pod = makePod();
    const linksBefore = ip("-o", "link").split("\n").length;
    const network = await tm.setUp({ pod });
    assert.ok(netnsNames().includes(path.basename(network.netnsPath)));
    assert.equal(allocations(cni.dataDir, "flannel").length, 1);
    await tm.tearDown(pod.sandboxId);
    await tm.tearDown(pod.sandboxId);
    assert.ok(!netnsNames().includes(path.basename(network.netnsPath)));
    assert.deepEqual(allocations(cni.dataDir, "flannel"), []);
    assert.equal(tm.get(pod.sandboxId), undefined);
    assert.deepEqual(fs.readdirSync(path.join(cni.root, "pods")), []);
    // The node keeps only its CNI bridge, made by the first pod.
    assert.ok(ip("-o", "link").split("\n").length <= linksBefore + 1);
  });

  it("sets up pods in parallel with distinct addresses", async () => {
    const pods = Array.from({ length: 6 }, () => makePod());
    const networks = await Promise.all(pods.map((pod) => tm.setUp({ pod })));
    try {
      const addresses = networks.map((n) => n.interfaces[0].addresses[0].address);
      assert.equal(new Set(addresses).size, 6);
    } finally {
      await Promise.all(pods.map((pod) => tm.tearDown(pod.sandboxId)));
    }
    assert.deepEqual(allocations(cni.dataDir, "flannel"), []);
  });
});

describe("tapmanager on a ptp network", () => {
  it("gives the guest a /32 when the plugin routes its subnet via the gateway", async () => {
    const cni = makeCniSandbox();
    cni.writeConf("10-ptp.conflist", ptpList("ptp", "1.0.0", cni.dataDir, "10.71.0.0/16"));
    const tm = new Tapmanager({ cni: cni.client(), stateDir: path.join(cni.root, "pods") });
    const pod = makePod();
    try {
      const network = await tm.setUp({ pod });
      const eth0 = network.interfaces[0];
      assert.equal(eth0.addresses[0].prefixLength, 16, "the address as CNI gave it");
      const lease = JSON.parse(
        fs.readFileSync(path.join(cni.root, "pods", `${pod.sandboxId}.json`), "utf8"),
      ).interfaces[0].lease;
      assert.equal(lease.prefixLength, 32);
      assert.equal(lease.router, "10.71.0.1");
      assert.deepEqual(
        lease.routes.map(
          (r: { dst: string; prefixLength: number; gateway: string }) =>
            `${r.dst}/${r.prefixLength} via ${r.gateway}`,
        ),
        ["10.71.0.1/32 via 0.0.0.0", "10.71.0.0/16 via 10.71.0.1", "0.0.0.0/0 via 10.71.0.1"],
      );
      await tm.tearDown(pod.sandboxId);
    } finally {
      await tm.close();
      cni.remove();
    }
  });
});

describe("tapmanager on a Calico-style network", () => {
  it("serves a /32 with an on-link route to 169.254.1.1 and the default route through it", async () => {
    const cni = makeCniSandbox();
    const type = calicoPluginInto(cni.binDir);
    cni.writeConf("10-calico.conflist", {
      cniVersion: "1.0.0",
      name: "k8s-pod-network",
      plugins: [
        {
          type,
          mtu: 1440,
          ipam: {
            type: "host-local",
            dataDir: cni.dataDir,
            ranges: [[{ subnet: "192.168.77.0/24" }]],
          },
        },
      ],
    });
    const tm = new Tapmanager({ cni: cni.client(), stateDir: path.join(cni.root, "pods") });
    const pod = makePod();
    try {
      const network = await tm.setUp({ pod });
      const eth0 = network.interfaces[0];
      assert.equal(eth0.mtu, 1440);
      assert.equal(eth0.gateway, "169.254.1.1");
      const record = JSON.parse(
        fs.readFileSync(path.join(cni.root, "pods", `${pod.sandboxId}.json`), "utf8"),
      );
      const lease = record.interfaces[0].lease;
      assert.equal(lease.prefixLength, 32);
      assert.equal(lease.mac, eth0.guestMac);
      assert.deepEqual(
        lease.routes.map(
          (r: { dst: string; prefixLength: number; gateway: string }) =>
            `${r.dst}/${r.prefixLength} via ${r.gateway}`,
        ),
        ["169.254.1.1/32 via 0.0.0.0", "0.0.0.0/0 via 169.254.1.1"],
      );
      await tm.tearDown(pod.sandboxId);
      assert.deepEqual(allocations(cni.dataDir, "k8s-pod-network"), []);
      assert.doesNotMatch(ip("-o", "link"), /cali[0-9a-f]{11}/);
    } finally {
      await tm.close();
      cni.remove();
    }
  });
});
