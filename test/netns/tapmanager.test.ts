import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import {
  BOOTREQUEST,
  type DhcpMessage,
  FLAG_BROADCAST,
  formatMessage,
  MessageType,
  Option,
  parseMessage,
  u8,
} from "../../src/dhcp/codec";
import { Tapmanager } from "../../src/tapmanager";
import { calicoPluginInto } from "../harness/calico-plugin";
import {
  allocations,
  bridgeList,
  type CniSandbox,
  cacheFiles,
  makeCniSandbox,
  makePod,
  misbehavingPlugin,
  ptpList,
  writePlugin,
} from "../harness/cni-fixtures";
import { ip, ipIn, linksIn, requirePrivateNamespace } from "../harness/fixtures";
import { startDhcpClient } from "../harness/guest-clients";
import { startRelay } from "../harness/relay";

requirePrivateNamespace();

function netnsNames(): string[] {
  return ip("netns", "list")
    .split("\n")
    .filter(Boolean)
    .map((l) => l.split(" ")[0]);
}

/** The node's veths (the bridge plugin's host bridges stay by design). */
function nodeVeths(): string[] {
  const links = JSON.parse(ip("-j", "-d", "link", "show")) as {
    ifname: string;
    linkinfo?: { info_kind?: string };
  }[];
  return links.filter((l) => l.linkinfo?.info_kind === "veth").map((l) => l.ifname);
}

/** Three pods set up on a bridge network by a tapmanager that then closes, as a vmlet that stops. */
async function threePodsSetUp(network: string, subnet: string) {
  const cni = makeCniSandbox();
  cni.writeConf("10-br.conflist", bridgeList(network, "1.0.0", cni.dataDir, subnet));
  const stateDir = path.join(cni.root, "pods");
  const first = new Tapmanager({ cni: cni.client(), stateDir });
  const pods = [makePod(), makePod(), makePod()];
  const networks = [];
  for (const pod of pods) networks.push(await first.setUp({ pod }));
  await first.close();
  return { cni, stateDir, pods, networks };
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

  it("serialises calls for one pod: concurrent and repeated setUp build it once, concurrent tearDowns undo it once", async () => {
    const pod = makePod();
    const [a, b] = await Promise.all([tm.setUp({ pod }), tm.setUp({ pod })]);
    assert.deepEqual(a, b);
    assert.deepEqual(await tm.setUp({ pod }), a, "a repeated setUp returns what exists");
    assert.deepEqual(allocations(cni.dataDir, "flannel"), [a.interfaces[0].addresses[0].address]);
    assert.equal(tm.dhcpStats(pod.sandboxId).length, 1, "one DHCP server");
    await Promise.all([tm.tearDown(pod.sandboxId), tm.tearDown(pod.sandboxId)]);
    assert.deepEqual(allocations(cni.dataDir, "flannel"), []);
    assert.ok(!netnsNames().includes(path.basename(a.netnsPath)));
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
      const offer = await offerOnTap(tm, pod.sandboxId);
      assert.equal(offer.yiaddr, eth0.addresses[0].address);
      assert.equal(offer.options.subnetMask, "255.255.255.255");
      assert.deepEqual(offer.options.routers, ["10.71.0.1"]);
      assert.deepEqual(routesText(offer), PTP_OPTION_121);
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
      const offer = await offerOnTap(tm, pod.sandboxId);
      assert.equal(offer.yiaddr, eth0.addresses[0].address);
      assert.equal(offer.options.subnetMask, "255.255.255.255");
      assert.equal(offer.options.mtu, 1440);
      assert.deepEqual(routesText(offer), [
        "169.254.1.1/32 via 0.0.0.0",
        "0.0.0.0/0 via 169.254.1.1",
      ]);
      await tm.tearDown(pod.sandboxId);
      assert.deepEqual(allocations(cni.dataDir, "k8s-pod-network"), []);
      assert.doesNotMatch(ip("-o", "link"), /cali[0-9a-f]{11}/);
    } finally {
      await tm.close();
      cni.remove();
    }
  });
});

describe("tapmanager with several networks, dual stack, and a restart", () => {
  it("gives each network its own bridge, tap and lease; only eth0 carries the default route", async () => {
    const cni = makeCniSandbox();
    cni.writeConf("10-a.conflist", bridgeList("neta", "1.0.0", cni.dataDir, "10.10.1.0/24"));
    cni.writeConf("20-b.conflist", bridgeList("netb", "1.0.0", cni.dataDir, "10.20.1.0/24"));
    const tm = new Tapmanager({ cni: cni.client(), stateDir: path.join(cni.root, "pods") });
    const pod = makePod();
    try {
      const network = await tm.setUp({ pod, networks: ["neta", "netb"] });
      const [eth0, net1] = network.interfaces;
      assert.deepEqual(
        network.interfaces.map((i) => [i.ifname, i.network, i.bridge, i.tap]),
        [
          ["eth0", "neta", "br-eth0", "tap-eth0"],
          ["net1", "netb", "br-net1", "tap-net1"],
        ],
      );
      assert.equal(eth0.gateway, "10.10.1.1");
      assert.equal(net1.gateway, undefined);
      assert.ok(eth0.routes.some((r) => r.prefixLength === 0));
      assert.ok(!net1.routes.some((r) => r.prefixLength === 0));
      assert.equal(tm.dhcpStats(pod.sandboxId).length, 2, "one DHCP server per bridge");
      const taps = tm.openTaps(pod.sandboxId);
      assert.deepEqual(
        taps.map((t) => [t.tap, t.guestMac]),
        [
          ["tap-eth0", eth0.guestMac],
          ["tap-net1", net1.guestMac],
        ],
      );
      for (const t of taps) fs.closeSync(t.fd);
      await tm.tearDown(pod.sandboxId);
      assert.deepEqual(allocations(cni.dataDir, "neta"), []);
      assert.deepEqual(allocations(cni.dataDir, "netb"), []);
    } finally {
      await tm.close();
      cni.remove();
    }
  });

  it("keeps IPv6 addresses of a dual-stack result and serves the IPv4 one", async () => {
    const cni = makeCniSandbox();
    const list = bridgeList("dual", "1.0.0", cni.dataDir, "10.30.1.0/24");
    (list.plugins[0] as { ipam: { ranges: unknown[] } }).ipam.ranges.push([
      { subnet: "fd00:30::/64" },
    ]);
    cni.writeConf("10-dual.conflist", list);
    const tm = new Tapmanager({ cni: cni.client(), stateDir: path.join(cni.root, "pods") });
    const pod = makePod();
    try {
      const network = await tm.setUp({ pod });
      const families = network.interfaces[0].addresses.map((a) => a.family).sort();
      assert.deepEqual(families, [4, 6]);
      assert.match(
        network.interfaces[0].addresses.find((a) => a.family === 6)!.address,
        /^fd00:30::/,
      );
      await tm.tearDown(pod.sandboxId);
    } finally {
      await tm.close();
      cni.remove();
    }
  });

  it("after a restart, recover() serves DHCP again from the persisted state", async () => {
    const cni = makeCniSandbox();
    cni.writeConf("10-br.conflist", bridgeList("rec", "1.0.0", cni.dataDir, "10.40.1.0/24"));
    const stateDir = path.join(cni.root, "pods");
    const first = new Tapmanager({ cni: cni.client(), stateDir });
    const pod = makePod();
    const network = await first.setUp({ pod });
    await first.close(); // vmlet stops: DHCP goes, the network stays.
    const second = new Tapmanager({ cni: cni.client(), stateDir });
    try {
      assert.deepEqual(await second.recover(), {
        recovered: [pod.sandboxId],
        removed: [],
        failed: [],
      });
      assert.deepEqual(second.get(pod.sandboxId), network);
      const [tap] = second.openTaps(pod.sandboxId);
      const guest = await startRelay({ podTapFd: tap.fd, mac: tap.guestMac });
      const client = await startDhcpClient("udhcpc", { netns: guest.netns, ifname: guest.ifname });
      try {
        const state = await client.waitForLease({ timeoutMs: 20_000 });
        assert.deepEqual(state.addresses, [`${network.interfaces[0].addresses[0].address}/24`]);
      } finally {
        await client.stop();
        await guest.stop();
        fs.closeSync(tap.fd);
      }
      await second.tearDown(pod.sandboxId);
      assert.deepEqual(allocations(cni.dataDir, "rec"), []);
    } finally {
      await second.close();
      cni.remove();
    }
  });

  it("recover() serves a pod whose record an earlier vmlet wrote (version 1, the lease kept instead of the view)", async () => {
    const cni = makeCniSandbox();
    cni.writeConf("10-ptp.conflist", ptpList("old", "1.0.0", cni.dataDir, "10.72.0.0/16"));
    const stateDir = path.join(cni.root, "pods");
    const first = new Tapmanager({ cni: cni.client(), stateDir });
    const pod = makePod();
    const network = await first.setUp({ pod });
    await first.close();
    // Rewrite the record as version 1 wrote it: the served /32 only in a persisted lease.
    const file = path.join(stateDir, `${pod.sandboxId}.json`);
    const record = JSON.parse(fs.readFileSync(file, "utf8"));
    const nic = record.interfaces[0];
    const lease = {
      mac: nic.guestMac,
      ip: nic.ipv4.address,
      prefixLength: nic.ipv4.prefixLength,
      routes: nic.routes,
      mtu: nic.mtu,
      dns: nic.dns.nameservers,
      search: nic.dns.search,
      hostname: record.hostname,
      leaseSeconds: 86_400,
      router: nic.gateway,
    };
    delete nic.ipv4;
    fs.writeFileSync(
      file,
      JSON.stringify({ ...record, version: 1, interfaces: [{ ...nic, lease }] }),
    );
    const second = new Tapmanager({ cni: cni.client(), stateDir });
    try {
      assert.deepEqual(await second.recover(), {
        recovered: [pod.sandboxId],
        removed: [],
        failed: [],
      });
      assert.deepEqual(second.get(pod.sandboxId), network);
      const offer = await offerOnTap(second, pod.sandboxId);
      assert.equal(offer.yiaddr, network.interfaces[0].addresses[0].address);
      assert.equal(offer.options.subnetMask, "255.255.255.255", "the /32, not CNI's /16");
      assert.deepEqual(routesText(offer), [
        "10.72.0.1/32 via 0.0.0.0",
        "10.72.0.0/16 via 10.72.0.1",
        "0.0.0.0/0 via 10.72.0.1",
      ]);
      const rewritten = JSON.parse(fs.readFileSync(file, "utf8"));
      assert.equal(rewritten.version, 2, "recovery writes the record back in today's shape");
      assert.equal(rewritten.interfaces[0].lease, undefined);
      await second.tearDown(pod.sandboxId);
      assert.deepEqual(allocations(cni.dataDir, "old"), []);
    } finally {
      await second.close();
      cni.remove();
    }
  });

  it("recover(): a pod whose network cannot be re-attached is reported, not ready, and does not stop the others", async () => {
    const { cni, stateDir, pods, networks } = await threePodsSetUp("iso", "10.40.2.0/24");
    // Someone deleted the middle pod's CNI interface while vmlet was down.
    ip("-n", path.basename(networks[1]!.netnsPath), "link", "del", "eth0");
    const second = new Tapmanager({ cni: cni.client(), stateDir });
    try {
      const outcome = await second.recover();
      assert.deepEqual(
        [...outcome.recovered].sort(),
        [pods[0]!.sandboxId, pods[2]!.sandboxId].sort(),
      );
      assert.deepEqual(outcome.removed, []);
      assert.equal(outcome.failed.length, 1);
      assert.equal(outcome.failed[0]!.sandboxId, pods[1]!.sandboxId);
      assert.match(outcome.failed[0]!.error, /re-attach .*eth0/);
      assert.equal(second.get(pods[1]!.sandboxId), undefined, "the broken pod is not ready");
      assert.deepEqual(second.dhcpStats(pods[1]!.sandboxId), [], "and serves no DHCP");
      for (const i of [0, 2]) {
        assert.deepEqual(second.get(pods[i]!.sandboxId), networks[i]);
        assert.equal(second.dhcpStats(pods[i]!.sandboxId).length, 1);
      }
      for (const pod of pods) await second.tearDown(pod.sandboxId);
      assert.deepEqual(allocations(cni.dataDir, "iso"), []);
      assert.deepEqual(fs.readdirSync(stateDir), []);
    } finally {
      await second.close();
      cni.remove();
    }
  });

  it("recover(): a truncated pod record is set aside with a log line naming it, and the other pods recover", async () => {
    const { cni, stateDir, pods, networks } = await threePodsSetUp("torn", "10.40.9.0/24");
    // A torn write (a disk that lied about fsync), and a temp file a crash left.
    const bad = path.join(stateDir, `${pods[1]!.sandboxId}.json`);
    const text = fs.readFileSync(bad, "utf8");
    fs.writeFileSync(bad, text.slice(0, text.length / 2));
    const stale = path.join(stateDir, `.${pods[0]!.sandboxId}.json.0badf00d.tmp`);
    fs.writeFileSync(stale, "{");
    const warnings: { fields: Record<string, unknown>; message: string }[] = [];
    const log = {
      info() {},
      debug() {},
      warn: (fields: object, message: string) =>
        warnings.push({ fields: fields as Record<string, unknown>, message }),
    };
    const second = new Tapmanager({ cni: cni.client(), stateDir, log });
    try {
      const outcome = await second.recover();
      assert.deepEqual(
        [...outcome.recovered].sort(),
        [pods[0]!.sandboxId, pods[2]!.sandboxId].sort(),
      );
      const warning = warnings.find((w) => w.fields.file === bad);
      assert.ok(warning, `a warning names ${bad}: ${JSON.stringify(warnings)}`);
      assert.match(warning.message, /unreadable pod network record set aside/);
      const setAside = fs.readdirSync(stateDir).filter((f) => f.includes(".unreadable-"));
      assert.deepEqual(setAside, [path.basename(String(warning.fields.setAsideAs))]);
      assert.ok(!fs.existsSync(stale), "the stale temp file is removed");
      assert.equal(second.get(pods[1]!.sandboxId), undefined);
      for (const i of [0, 2]) assert.deepEqual(second.get(pods[i]!.sandboxId), networks[i]);

      // The set-aside pod: kubelet's StopPodSandbox removes its netns, GC frees its address.
      for (const pod of pods) await second.tearDown(pod.sandboxId);
      await second.collectGarbage();
      assert.deepEqual(allocations(cni.dataDir, "torn"), []);
      for (const n of networks) assert.ok(!netnsNames().includes(path.basename(n.netnsPath)));
    } finally {
      await second.close();
      cni.remove();
    }
  });

  it("recover() removes a pod that a crash caught half-made, releasing its address", async () => {
    const cni = makeCniSandbox();
    cni.writeConf("10-br.conflist", bridgeList("half", "1.0.0", cni.dataDir, "10.50.1.0/24"));
    const stateDir = path.join(cni.root, "pods");
    const tm = new Tapmanager({ cni: cni.client(), stateDir });
    const pod = makePod();
    const network = await tm.setUp({ pod });
    await tm.close();
    // What a crash between CNI ADD and reading the netns leaves behind.
    const file = path.join(stateDir, `${pod.sandboxId}.json`);
    const record = JSON.parse(fs.readFileSync(file, "utf8"));
    fs.writeFileSync(file, JSON.stringify({ ...record, phase: "creating", interfaces: [] }));
    const again = new Tapmanager({ cni: cni.client(), stateDir });
    try {
      assert.deepEqual(await again.recover(), {
        recovered: [],
        removed: [pod.sandboxId],
        failed: [],
      });
      assert.deepEqual(allocations(cni.dataDir, "half"), []);
      assert.ok(!ip("netns", "list").includes(path.basename(network.netnsPath)));
      assert.deepEqual(fs.readdirSync(stateDir), []);
    } finally {
      await again.close();
      cni.remove();
    }
  });

  it("a tearDown whose CNI DEL fails keeps the pod for a retry, and the retry leaves nothing", async () => {
    const cni = makeCniSandbox();
    const refuse = path.join(cni.root, "refuse-del");
    // Chained after the bridge plugin: refuses DEL while `refuse` exists, else passes on.
    writePlugin(
      cni.binDir,
      "del-refuser",
      `#!/bin/sh
if [ "$CNI_COMMAND" = DEL ] && [ -e ${refuse} ]; then
  cat >/dev/null
  echo '{"cniVersion":"1.0.0","code":107,"msg":"fixture refused DEL"}'; exit 1
fi
exec ${process.execPath} -e 'let s="";process.stdin.on("data",(d)=>(s+=d)).on("end",()=>{const c=JSON.parse(s);if(process.env.CNI_COMMAND==="ADD")process.stdout.write(JSON.stringify(c.prevResult));if(process.env.CNI_COMMAND==="VERSION")process.stdout.write(JSON.stringify({cniVersion:"1.0.0",supportedVersions:["1.0.0"]}));})'
`,
    );
    cni.writeConf(
      "10-br.conflist",
      bridgeList("retry", "1.0.0", cni.dataDir, "10.62.1.0/24", [{ type: "del-refuser" }]),
    );
    const stateDir = path.join(cni.root, "pods");
    const tm = new Tapmanager({ cni: cni.client(), stateDir });
    const pod = makePod();
    const vethsBefore = nodeVeths();
    const fds = fs.readdirSync("/proc/self/fd").length;
    try {
      const network = await tm.setUp({ pod });
      fs.writeFileSync(refuse, "");
      await assert.rejects(tm.tearDown(pod.sandboxId), /CNI DEL: .*fixture refused DEL/);
      // Kept for the retry: its netns, record and CNI record (the bridge plugin's DEL, run
      // after the refusal, may have freed the address already); DHCP stopped.
      assert.ok(netnsNames().includes(path.basename(network.netnsPath)));
      assert.deepEqual(fs.readdirSync(stateDir), [`${pod.sandboxId}.json`]);
      assert.notDeepEqual(cacheFiles(cni.cacheDir), []);
      assert.deepEqual(tm.dhcpStats(pod.sandboxId), [], "DHCP servers closed");
      fs.rmSync(refuse);
      await tm.tearDown(pod.sandboxId);
      assert.ok(!netnsNames().includes(path.basename(network.netnsPath)));
      assert.deepEqual(allocations(cni.dataDir, "retry"), []);
      assert.deepEqual(cacheFiles(cni.cacheDir), [], "no CNI record left");
      assert.deepEqual(fs.readdirSync(stateDir), []);
      assert.deepEqual(nodeVeths(), vethsBefore, "no pod veth left on the node");
      assert.equal(fs.readdirSync("/proc/self/fd").length, fds, "no fd or socket left open");
    } finally {
      await tm.close();
      cni.remove();
    }
  });

  // A failure injected at each step of setUp: CNI ADD (a plugin refuses, a plugin is
  // missing) and rewiring (the bridge's name is taken by a link that is not a bridge).
  const failures: { step: string; chained: (cni: CniSandbox) => unknown; message: RegExp }[] = [
    {
      step: "a plugin refuses ADD",
      chained: (cni) => {
        misbehavingPlugin(cni.binDir, "refuser", "ADD", "error");
        return { type: "refuser" };
      },
      message: /fixture refused/,
    },
    {
      step: "a plugin is missing",
      chained: () => ({ type: "no-such-plugin" }),
      message: /no-such-plugin/,
    },
    {
      step: "rewiring fails",
      chained: (cni) => {
        writePlugin(
          cni.binDir,
          "squatter",
          `#!/bin/sh
# Passes prevResult on, after taking the name of the bridge vmlet makes for net1.
if [ "$CNI_COMMAND" = ADD ]; then
  ip netns exec "$(basename "$CNI_NETNS")" ip link add br-net1 type veth peer name sq0 >&2
fi
exec ${process.execPath} -e 'let s="";process.stdin.on("data",(d)=>(s+=d)).on("end",()=>{const c=JSON.parse(s);if(process.env.CNI_COMMAND==="ADD")process.stdout.write(JSON.stringify(c.prevResult));if(process.env.CNI_COMMAND==="VERSION")process.stdout.write(JSON.stringify({cniVersion:"1.0.0",supportedVersions:["1.0.0"]}));})'
`,
        );
        return { type: "squatter" };
      },
      message: /rewire net1/,
    },
  ];
  for (const failure of failures) {
    it(`fails setUp with the pod and step named when ${failure.step}, and leaves nothing behind`, async () => {
      const cni = makeCniSandbox();
      cni.writeConf("10-br.conflist", bridgeList("good", "1.0.0", cni.dataDir, "10.60.1.0/24"));
      // The second network's chain: the bridge plugin allocates, then the failure.
      cni.writeConf(
        "20-bad.conflist",
        bridgeList("bad", "1.0.0", cni.dataDir, "10.61.1.0/24", [failure.chained(cni)]),
      );
      const tm = new Tapmanager({ cni: cni.client(), stateDir: path.join(cni.root, "pods") });
      const pod = makePod();
      const vethsBefore = nodeVeths();
      const fds = fs.readdirSync("/proc/self/fd").length;
      try {
        const error = await tm.setUp({ pod, networks: ["good", "bad"] }).catch((e: Error) => e);
        assert.ok(error instanceof Error);
        assert.match(error.message, new RegExp(`^setUp default/${pod.name}: `));
        assert.match(error.message, failure.message);
        assert.match(error.message, /cleaned up/);
        assert.deepEqual(allocations(cni.dataDir, "good"), []);
        assert.deepEqual(allocations(cni.dataDir, "bad"), []);
        assert.deepEqual(cacheFiles(cni.cacheDir), [], "no CNI result cached");
        assert.ok(!netnsNames().includes(`vmlet-${pod.sandboxId}`));
        assert.deepEqual(fs.readdirSync(path.join(cni.root, "pods")), []);
        assert.deepEqual(nodeVeths(), vethsBefore, "no pod veth left on the node");
        assert.equal(fs.readdirSync("/proc/self/fd").length, fds, "no fd or socket left open");
        assert.deepEqual(tm.dhcpStats(pod.sandboxId), [], "no DHCP server left");
      } finally {
        await tm.close();
        cni.remove();
      }
    });
  }
});

const PTP_OPTION_121 = [
  "10.71.0.1/32 via 0.0.0.0",
  "10.71.0.0/16 via 10.71.0.1",
  "0.0.0.0/0 via 10.71.0.1",
];

/** Option 121 of a reply, in order, as "dst/len via gateway". */
function routesText(reply: DhcpMessage): string[] {
  return (reply.options.classlessRoutes ?? []).map(
    (r) => `${r.dst}/${r.prefixLength} via ${r.gateway}`,
  );
}

/**
 * The OFFER a guest on the pod's first tap gets for a DISCOVER, as it would see it. The
 * DISCOVER is sent again every 2 s until the OFFER comes, as a client retransmits.
 */
async function offerOnTap(tm: Tapmanager, sandboxId: string): Promise<DhcpMessage> {
  const [tap, ...others] = tm.openTaps(sandboxId);
  for (const t of others) fs.closeSync(t.fd);
  untilTapForwardingSync(tm.get(sandboxId)!.netnsPath, tap!.tap);
  let resend: NodeJS.Timeout | undefined;
  try {
    const discover = formatMessage(
      {
        op: BOOTREQUEST,
        xid: 0x0ff3,
        flags: FLAG_BROADCAST,
        chaddr: Buffer.from(tap!.guestMac.replaceAll(":", ""), "hex"),
      },
      [[Option.MESSAGE_TYPE, u8(MessageType.DISCOVER)]],
    ).datagram;
    const frame = dhcpFrame(tap!.guestMac, discover);
    const reply = readDhcpReply(tap!.fd);
    fs.writeSync(tap!.fd, frame);
    resend = setInterval(() => fs.writeSync(tap!.fd, frame), 2000);
    const offer = parseMessage(
      await reply.catch((e: Error) => {
        const stats = JSON.stringify(tm.dhcpStats(sandboxId));
        throw new Error(`${e.message}; DHCP ${stats}`);
      }),
    );
    assert.equal(offer.options.messageType, MessageType.OFFER);
    return offer;
  } finally {
    clearInterval(resend);
    fs.closeSync(tap!.fd);
  }
}

/** An Ethernet frame with a broadcast DHCP message from `mac`, behind a zero vnet header. */
function dhcpFrame(mac: string, dhcp: Buffer): Buffer {
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(68, 0);
  udp.writeUInt16BE(67, 2);
  udp.writeUInt16BE(8 + dhcp.length, 4); // checksum 0: none, as IPv4 allows
  const ipHeader = Buffer.alloc(20);
  ipHeader.writeUInt8(0x45, 0);
  ipHeader.writeUInt16BE(20 + udp.length + dhcp.length, 2);
  ipHeader.writeUInt8(64, 8);
  ipHeader.writeUInt8(17, 9);
  ipHeader.writeUInt32BE(0xffffffff, 16); // from 0.0.0.0 to 255.255.255.255
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += ipHeader.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  ipHeader.writeUInt16BE(~sum & 0xffff, 10);
  const ethernet = Buffer.concat([
    Buffer.alloc(6, 0xff),
    Buffer.from(mac.replaceAll(":", ""), "hex"),
    Buffer.from([0x08, 0x00]),
  ]);
  // The tap has IFF_VNET_HDR: every frame carries a virtio-net header (10 bytes), zero here.
  return Buffer.concat([Buffer.alloc(10), ethernet, ipHeader, udp, dhcp]);
}

/** Reads frames off a tap fd in a child process until a DHCP reply; resolves with it. */
/**
 * Waits until the pod bridge forwards to the tap. Its port starts forwarding when the
 * kernel's link watcher sees the carrier that opening the tap fd raised, a moment after
 * the open: a reply sent before that is dropped by the bridge, not by vmlet. The wait
 * blocks this process, so vmlet gets no event-loop turn in it.
 */
function untilTapForwardingSync(netnsPath: string, tap: string): void {
  const nap = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < 500; i++) {
    const link = execFileSync(
      "nsenter",
      [`--net=${netnsPath}`, "ip", "-d", "-o", "link", "show", "dev", tap],
      { encoding: "utf8" },
    );
    if (/bridge_slave state forwarding/.test(link)) return;
    Atomics.wait(nap, 0, 0, 10);
  }
  throw new Error(`the pod bridge never forwarded to ${tap}`);
}

function withXid(datagram: Buffer, xid: number): Buffer {
  const copy = Buffer.from(datagram);
  copy.writeUInt32BE(xid, 4);
  return copy;
}

function readDhcpReply(tapFd: number): Promise<Buffer> {
  const script = `
    const fs = require("fs");
    const buf = Buffer.alloc(65536);
    for (;;) {
      const n = fs.readSync(3, buf, 0, buf.length, null);
      const frame = buf.subarray(10, n); // past the vnet header
      if (frame.readUInt16BE(12) !== 0x0800 || frame[23] !== 17) continue;
      const ihl = (frame[14] & 0x0f) * 4;
      if (frame.readUInt16BE(14 + ihl + 2) !== 68) continue;
      process.stdout.write(frame.subarray(14 + ihl + 8).toString("hex"));
      break;
    }`;
  const child = spawn(process.execPath, ["-e", script], {
    stdio: ["ignore", "pipe", "inherit", tapFd],
    timeout: 10_000,
  });
  let out = "";
  child.stdout!.on("data", (d) => {
    out += d;
  });
  return new Promise((resolve, reject) =>
    child.on("exit", (code, signal) =>
      code === 0
        ? resolve(Buffer.from(out, "hex"))
        : reject(new Error(`no DHCP reply on the tap (${code ?? signal})`)),
    ),
  );
}

describe("tapmanager DHCP from the first packet", () => {
  it("answers a DISCOVER written to the tap the moment setUp returns: the pod IP, hostname, and the CNI result's DNS", async () => {
    const cni = makeCniSandbox();
    const list = bridgeList("first", "1.0.0", cni.dataDir, "10.40.3.0/24");
    (list.plugins[0] as Record<string, unknown>).dns = {
      nameservers: ["10.96.0.10"],
      search: ["first.svc.cluster.local", "svc.cluster.local"],
    };
    cni.writeConf("10-br.conflist", list);
    const tm = new Tapmanager({ cni: cni.client(), stateDir: path.join(cni.root, "pods") });
    const pod = makePod();
    try {
      const network = await tm.setUp({ pod });
      const [tap] = tm.openTaps(pod.sandboxId);
      untilTapForwardingSync(network.netnsPath, tap!.tap);
      // Attached after setUp returned: until then the server answers every request.
      assert.equal(await tm.replyCachesSettled(pod.sandboxId), true, "reply cache attached");
      const discover = formatMessage(
        {
          op: BOOTREQUEST,
          xid: 0x5eed,
          flags: FLAG_BROADCAST,
          chaddr: Buffer.from(tap!.guestMac.replaceAll(":", ""), "hex"),
        },
        [[Option.MESSAGE_TYPE, u8(MessageType.DISCOVER)]],
      ).datagram;
      // Synchronously, before this process goes back to its event loop: one packet, no retry.
      fs.writeSync(tap!.fd, dhcpFrame(tap!.guestMac, discover));
      const offer = parseMessage(await readDhcpReply(tap!.fd));
      // The same DISCOVER again, steered by the guard into the bridge: the kernel's reply
      // cache answers it into the tap, the same OFFER with the new xid.
      fs.writeSync(tap!.fd, dhcpFrame(tap!.guestMac, withXid(discover, 0x5eee)));
      const again = parseMessage(await readDhcpReply(tap!.fd));
      fs.closeSync(tap!.fd);
      assert.equal(again.xid, 0x5eee);
      assert.deepEqual({ ...again, xid: offer.xid }, offer);
      assert.equal(tm.dhcpStats(pod.sandboxId)[0]?.kernel?.hits, 1, "answered by the kernel");
      assert.equal(offer.xid, 0x5eed);
      assert.equal(offer.options.messageType, MessageType.OFFER);
      assert.equal(offer.yiaddr, network.interfaces[0].addresses[0].address);
      assert.equal(offer.options.hostname, pod.name, "option 12 is the pod name");
      assert.deepEqual(offer.options.dns, ["10.96.0.10"], "DNS from the CNI result");
      assert.deepEqual(offer.options.searchList, ["first.svc.cluster.local", "svc.cluster.local"]);
      assert.equal(offer.options.domain, "first.svc.cluster.local");
      assert.deepEqual(tm.dhcpStats(pod.sandboxId)[0]?.dropped, {});
      await tm.tearDown(pod.sandboxId);
    } finally {
      await tm.close();
      cni.remove();
    }
  });
});
