import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { after, before, describe, it } from "node:test";
import { Rtnl } from "../../src/sys/rtnl";
import {
  ipIn,
  linksIn,
  makeNetns,
  requirePrivateNamespace,
  type TestNetns,
} from "../harness/fixtures";

requirePrivateNamespace();

describe("rtnetlink inside a netns", () => {
  let pod: TestNetns;
  let peer: TestNetns;
  let rtnl: Rtnl;
  before(() => {
    pod = makeNetns("rt");
    peer = makeNetns("rp");
    rtnl = Rtnl.open(pod.path);
  });
  after(() => {
    rtnl.close();
    pod.remove();
    peer.remove();
  });

  it("creates a bridge and a veth whose peer lands in another netns", async () => {
    await rtnl.createBridge("br0");
    const peerFd = fs.openSync(peer.path, "r");
    try {
      await rtnl.createVeth("eth0", "veth-peer", peerFd);
    } finally {
      fs.closeSync(peerFd);
    }
    const kinds = Object.fromEntries(
      linksIn(pod.name).map((l) => [l.ifname, l.linkinfo?.info_kind]),
    );
    assert.equal(kinds.br0, "bridge");
    assert.equal(kinds.eth0, "veth");
    assert.ok(linksIn(peer.name).some((l) => l.ifname === "veth-peer"));
    const listed = await rtnl.links();
    assert.equal(listed.find((l) => l.name === "br0")?.kind, "bridge");
    assert.equal(listed.find((l) => l.name === "eth0")?.kind, "veth");
  });

  it("sets master, MAC, MTU, up and down as iproute2 reports them", async () => {
    await rtnl.setMaster("eth0", "br0");
    await rtnl.setMac("eth0", "0a:58:0a:f4:01:05");
    await rtnl.setMtu("eth0", 1450);
    await rtnl.setUp("eth0");
    await rtnl.setUp("br0");
    let eth0 = linksIn(pod.name).find((l) => l.ifname === "eth0")!;
    assert.equal(eth0.master, "br0");
    assert.equal(eth0.address, "0a:58:0a:f4:01:05");
    assert.equal(eth0.mtu, 1450);
    assert.ok(eth0.flags.includes("UP"));
    const mine = await rtnl.link("eth0");
    assert.deepEqual(
      { mac: mine.mac, mtu: mine.mtu, up: mine.up, master: mine.master },
      { mac: "0a:58:0a:f4:01:05", mtu: 1450, up: true, master: (await rtnl.link("br0")).index },
    );
    await rtnl.setDown("eth0");
    eth0 = linksIn(pod.name).find((l) => l.ifname === "eth0")!;
    assert.ok(!eth0.flags.includes("UP"));
    await rtnl.setUp("eth0");
  });

  it("turns a bridge port's learning off and pins a MAC to a port, as `bridge` reports them", async () => {
    const learning = () =>
      (
        JSON.parse(
          execFileSync("bridge", ["-n", pod.name, "-j", "-d", "link", "show"], {
            encoding: "utf8",
          }),
        ) as {
          ifname: string;
          learning: boolean;
        }[]
      ).find((p) => p.ifname === "eth0")?.learning;
    const pinned = () =>
      (
        JSON.parse(
          execFileSync("bridge", ["-n", pod.name, "-j", "fdb", "show", "br", "br0"], {
            encoding: "utf8",
          }),
        ) as {
          mac: string;
          ifname: string;
          state?: string;
        }[]
      ).filter((e) => e.mac === "0a:58:0a:f4:01:99");
    assert.equal(learning(), true);
    await rtnl.setBridgePortLearning("eth0", false);
    assert.equal(learning(), false);
    // Twice is fine: replaced, not duplicated.
    await rtnl.setStaticFdb("eth0", "0a:58:0a:f4:01:99");
    await rtnl.setStaticFdb("eth0", "0a:58:0a:f4:01:99");
    assert.deepEqual(
      pinned().map((e) => [e.ifname, e.state]),
      [["eth0", "static"]],
    );
    await assert.rejects(
      rtnl.setStaticFdb("br0", "0a:58:0a:f4:01:99"),
      /static FDB .* on br0 in .*no bridge/,
    );
    await rtnl.setBridgePortLearning("eth0", true);
    assert.equal(learning(), true);
  });

  it("adds, lists and deletes IPv4 and IPv6 addresses", async () => {
    await rtnl.addAddress("br0", "10.244.1.5/24");
    await rtnl.addAddress("br0", "fd00:10::5/64");
    const addrs = (await rtnl.addresses()).filter((a) => a.scope === 0);
    const br0 = (await rtnl.link("br0")).index;
    assert.deepEqual(
      addrs
        .filter((a) => a.index === br0)
        .map((a) => `${a.address}/${a.prefixLength}`)
        .sort(),
      ["10.244.1.5/24", "fd00:10::5/64"],
    );
    assert.match(ipIn(pod.name, "-4", "addr", "show", "br0"), /inet 10\.244\.1\.5\/24/);
    await rtnl.deleteAddress("br0", "fd00:10::5/64");
    assert.doesNotMatch(ipIn(pod.name, "-6", "addr", "show", "br0"), /fd00:10::5/);
  });

  it("adds and deletes routes, including an on-link gateway outside every subnet", async () => {
    await rtnl.addRoute({ dst: "169.254.1.1", dstLength: 32, device: "br0", scope: "link" });
    await rtnl.addRoute({ dst: "0.0.0.0", dstLength: 0, gateway: "169.254.1.1", device: "br0" });
    await rtnl.addRoute({
      dst: "10.96.0.0",
      dstLength: 12,
      gateway: "10.244.1.1",
      device: "br0",
      onlink: true,
    });
    const shown = ipIn(pod.name, "-4", "route", "show");
    assert.match(shown, /^default via 169\.254\.1\.1 dev br0/m);
    assert.match(shown, /^169\.254\.1\.1 dev br0 .*scope link/m);
    assert.match(shown, /^10\.96\.0\.0\/12 via 10\.244\.1\.1 dev br0 .*onlink/m);
    const routes = await rtnl.routes(4);
    const def = routes.find((r) => r.dstLength === 0);
    assert.equal(def?.gateway, "169.254.1.1");
    assert.equal(routes.find((r) => r.dst === "10.96.0.0")?.onlink, true);
    await rtnl.deleteRoute({
      dst: "10.96.0.0",
      dstLength: 12,
      gateway: "10.244.1.1",
      device: "br0",
    });
    assert.doesNotMatch(ipIn(pod.name, "-4", "route", "show"), /10\.96\.0\.0/);
  });

  it("sets a link's arp_ignore over netlink, as /proc/sys reads it", async () => {
    const arpIgnore = () =>
      execFileSync(
        "ip",
        ["netns", "exec", pod.name, "cat", "/proc/sys/net/ipv4/conf/br0/arp_ignore"],
        {
          encoding: "utf8",
        },
      ).trim();
    assert.equal(arpIgnore(), "0");
    await rtnl.setArpIgnore("br0", 8);
    assert.equal(arpIgnore(), "8");
    await rtnl.setArpIgnore("br0", 0);
    assert.equal(arpIgnore(), "0");
  });

  it("sets a permanent neighbour entry", async () => {
    await rtnl.setNeighbour("br0", "10.244.1.9", "0a:58:0a:f4:01:09");
    assert.match(
      ipIn(pod.name, "neigh", "show", "dev", "br0"),
      /10\.244\.1\.9 lladdr 0a:58:0a:f4:01:09 PERMANENT/,
    );
  });

  it("names the operation, the netns and the errno when the kernel refuses", async () => {
    await assert.rejects(
      rtnl.createBridge("br0"),
      (e: Error) =>
        e.message === `RTM_NEWLINK bridge br0 in ${pod.path}: EEXIST` &&
        (e as { code?: string }).code === "EEXIST",
    );
    await assert.rejects(rtnl.setUp("nope0"), new RegExp(`nope0 up in ${pod.path}: ENODEV`));
    await assert.rejects(
      rtnl.addRoute({ dst: "10.9.0.0", dstLength: 16, gateway: "192.0.2.1" }),
      /RTM_NEWROUTE 10\.9\.0\.0\/16 via 192\.0\.2\.1 in .*: ENETUNREACH/,
    );
  });

  it("answers each request inside the call, and reads a dump of several datagrams whole", async () => {
    // 60 bridges: their link dump is over 100 KiB, several of the kernel's 32 KiB parts.
    // In a netns of their own: removing it takes them in one batch.
    const many = makeNetns("rm");
    const conn = Rtnl.open(many.path);
    try {
      const names = Array.from({ length: 60 }, (_, i) => `bm${i}`);
      const batch = names.map((n) => `link add ${n} type bridge`).join("\n");
      execFileSync("ip", ["-n", many.name, "-batch", "-"], { input: `${batch}\n` });
      let turned = false;
      setImmediate(() => {
        turned = true;
      });
      const listed = (await conn.links()).map((l) => l.name);
      assert.ok(!turned, "answered before the event loop turned once");
      for (const n of names) assert.ok(listed.includes(n), `${n} listed`);
      // A refused request leaves the socket in step: the next answer is the next request's.
      await assert.rejects(conn.setUp("nope0"), /ENODEV/);
      assert.equal((await conn.link("bm7")).name, "bm7");
    } finally {
      conn.close();
      many.remove();
    }
  });

  it("dumps one link's addresses and its main-table routes, both families, filtered in the kernel", async () => {
    const conn = Rtnl.open(pod.path);
    try {
      await conn.addAddress("eth0", "10.244.7.5/24");
      await conn.addAddress("eth0", "fd00:77::5/64");
      await conn.setUp("eth0");
      await conn.addRoute({
        dst: "10.77.0.0",
        dstLength: 16,
        gateway: "10.244.7.1",
        device: "eth0",
      });
      const eth0 = await conn.linkIndex("eth0");
      const br0 = await conn.linkIndex("br0");
      const addrs = await conn.addressesOf(eth0);
      assert.ok(addrs.length > 0 && addrs.every((a) => a.index === eth0), "only eth0's");
      const global = addrs
        .filter((a) => a.scope === 0)
        .map((a) => `${a.address}/${a.prefixLength}`);
      assert.deepEqual(global.sort(), ["10.244.7.5/24", "fd00:77::5/64"]);
      const routes = await conn.routesVia(eth0);
      assert.ok(
        routes.every((r) => r.oif === eth0 && r.table === 254),
        "main table, eth0's",
      );
      const shown = routes.map((r) => `${r.dst}/${r.dstLength} ${r.gateway ?? "-"}`);
      for (const want of ["10.244.7.0/24 -", "10.77.0.0/16 10.244.7.1", "fd00:77::/64 -"]) {
        assert.ok(shown.includes(want), `${want} in ${shown.join(", ")}`);
      }
      // br0 has the default route and the 10.244.1.0/24 of the earlier tests: not eth0's.
      assert.ok(!shown.some((r) => r.startsWith("0.0.0.0/0")), shown.join(", "));
      assert.ok((await conn.routesVia(br0)).some((r) => r.dstLength === 0));
      // The package-parsed dumps still work on a socket that checks strictly now.
      assert.ok((await conn.routes(4)).some((r) => r.dst === "10.77.0.0"));
      assert.ok((await conn.addresses(6)).some((a) => a.address === "fd00:77::5"));
      await conn.deleteRoute({
        dst: "10.77.0.0",
        dstLength: 16,
        gateway: "10.244.7.1",
        device: "eth0",
      });
      await conn.deleteAddress("eth0", "10.244.7.5/24");
      await conn.deleteAddress("eth0", "fd00:77::5/64");
    } finally {
      conn.close();
    }
  });

  it("looks an index up once per connection, and again for a link it deleted and made again", async () => {
    const conn = Rtnl.open(pod.path);
    try {
      await conn.createBridge("brx");
      const first = await conn.linkIndex("brx");
      assert.equal(first, (await conn.link("brx")).index);
      await assert.rejects(conn.linkIndex("nope0"), /find link nope0 in .*: ENODEV/);
      await conn.deleteLink("brx");
      await conn.createBridge("brx");
      const second = await conn.linkIndex("brx");
      assert.notEqual(second, first, "a new link, a new index");
      const brx = await conn.link("brx");
      assert.equal(second, brx.index);
      assert.deepEqual(await conn.linkAddress("brx"), {
        name: "brx",
        index: brx.index,
        mac: brx.mac,
      });
      // A change over the connection drops what it read of the link.
      assert.equal((await conn.cachedLink("brx")).mtu, 1500);
      await conn.setMtu("brx", 1400);
      assert.equal((await conn.cachedLink("brx")).mtu, 1400);
      await conn.deleteLink("brx");
    } finally {
      conn.close();
    }
  });

  it("deletes links", async () => {
    await rtnl.deleteLink("eth0");
    await rtnl.deleteLink("br0");
    assert.deepEqual(
      linksIn(pod.name).map((l) => l.ifname),
      ["lo"],
    );
    assert.ok(!linksIn(peer.name).some((l) => l.ifname === "veth-peer"), "the peer went with it");
  });
});
