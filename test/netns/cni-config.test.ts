// Network config loading and validation, the conf-dir watcher, and result parsing and
// version conversion: no plugins run here.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import {
  CniConfigError,
  convertResult,
  loadConfDir,
  parseNetworkFile,
  parseResult,
  toWire,
} from "../../src/cni-bridge/cni";
import { type CniSandbox, eventually, makeCniSandbox } from "../harness/cni-fixtures";

const bridge = {
  type: "bridge",
  bridge: "cni0",
  ipam: { type: "host-local", subnet: "10.1.0.0/16" },
};

describe("network config", () => {
  let sandbox: CniSandbox;
  beforeEach(() => {
    sandbox = makeCniSandbox();
  });
  afterEach(() => sandbox.remove());

  it("the lexically first .conflist, .conf or .json is the default network", () => {
    sandbox.writeConf("20-b.conflist", { cniVersion: "1.0.0", name: "b", plugins: [bridge] });
    sandbox.writeConf("10-a.conf", { cniVersion: "0.4.0", name: "a", ...bridge });
    sandbox.writeConf("30-c.json", { cniVersion: "0.3.1", name: "c", ...bridge });
    sandbox.writeConf("05-ignored.txt", { cniVersion: "1.0.0", name: "x", plugins: [bridge] });
    const state = loadConfDir(sandbox.confDir);
    assert.deepEqual(
      state.networks.map((n) => n.name),
      ["a", "b", "c"],
    );
    assert.equal(state.invalid.length, 0);
  });

  it("a single .conf is wrapped into a list of one plugin with its name and version", () => {
    const list = parseNetworkFile(
      JSON.stringify({ cniVersion: "0.4.0", name: "one", ...bridge }),
      "x.conf",
    );
    assert.equal(list.name, "one");
    assert.equal(list.cniVersion, "0.4.0");
    assert.equal(list.plugins.length, 1);
    assert.equal(list.plugins[0]!.type, "bridge");
    assert.equal(list.disableCheck, false);
  });

  it("reads disableCheck, capabilities, and picks the newest known of cniVersions", () => {
    const list = parseNetworkFile(
      JSON.stringify({
        cniVersion: "1.0.0",
        cniVersions: ["0.4.0", "1.1.0", "2.0.0"],
        name: "n",
        disableCheck: "true",
        disableGC: true,
        plugins: [bridge, { type: "portmap", capabilities: { portMappings: true, mac: false } }],
      }),
      "n.conflist",
    );
    assert.equal(list.cniVersion, "1.1.0");
    assert.equal(list.disableCheck, true);
    assert.equal(list.disableGC, true);
    assert.deepEqual(list.plugins[1]!.capabilities, { portMappings: true });
  });

  for (const [why, conf, message] of [
    ["no name", { cniVersion: "1.0.0", plugins: [bridge] }, /name undefined/],
    ["a bad name", { cniVersion: "1.0.0", name: "-x", plugins: [bridge] }, /name "-x"/],
    ["no cniVersion", { name: "n", plugins: [bridge] }, /cniVersion is missing/],
    ["an unknown cniVersion", { cniVersion: "0.2.0", name: "n", plugins: [bridge] }, /"0\.2\.0"/],
    ["no plugins", { cniVersion: "1.0.0", name: "n", plugins: [] }, /plugins is empty/],
    [
      "a plugin without type",
      { cniVersion: "1.0.0", name: "n", plugins: [{}] },
      /plugins\[0\]\.type/,
    ],
    [
      "a type that is a path",
      { cniVersion: "1.0.0", name: "n", plugins: [{ type: "../bin/sh" }] },
      /not a file name/,
    ],
  ] as const) {
    it(`rejects a conflist with ${why}, naming the file`, () => {
      assert.throws(
        () => parseNetworkFile(JSON.stringify(conf), "/etc/cni/net.d/10.conflist"),
        (e: Error) =>
          e instanceof CniConfigError && /10\.conflist/.test(e.message) && message.test(e.message),
      );
    });
  }

  it("skips an invalid file and takes the next valid one as default", () => {
    fs.writeFileSync(path.join(sandbox.confDir, "00-broken.conflist"), "{ nope");
    sandbox.writeConf("10-ok.conflist", { cniVersion: "1.0.0", name: "ok", plugins: [bridge] });
    const state = loadConfDir(sandbox.confDir);
    assert.deepEqual(
      state.networks.map((n) => n.name),
      ["ok"],
    );
    assert.match(state.invalid[0]!.error.message, /00-broken\.conflist: not JSON/);
  });

  it("the network is not ready until a config is written, and not ready again once removed", async () => {
    const client = sandbox.client();
    assert.equal(client.status().ready, false);
    assert.equal(client.status().reason, "NetworkPluginNotReady");
    assert.equal(client.defaultNetwork(), undefined);
    sandbox.writeConf("10-late.conflist", { cniVersion: "1.0.0", name: "late", plugins: [bridge] });
    await eventually(() => client.status().ready);
    assert.equal(client.defaultNetwork()?.name, "late");
    fs.rmSync(path.join(sandbox.confDir, "10-late.conflist"));
    await eventually(() => !client.status().ready);
  });

  it("a conf dir that appears after start is picked up", async () => {
    const confDir = path.join(sandbox.root, "later.d");
    const { CniClient } = await import("../../src/cni-bridge/cni");
    const client = new CniClient({ confDir, binDirs: [], cacheDir: sandbox.cacheDir });
    try {
      assert.equal(client.status().ready, false);
      fs.mkdirSync(confDir);
      fs.writeFileSync(
        path.join(confDir, "a.conflist"),
        JSON.stringify({ cniVersion: "1.0.0", name: "a", plugins: [bridge] }),
      );
      await eventually(() => client.status().ready, 5000);
    } finally {
      client.close();
    }
  });
});

const v1 = {
  cniVersion: "1.0.0",
  interfaces: [
    { name: "cni0", mac: "aa:bb:cc:dd:ee:01" },
    { name: "eth0", mac: "aa:bb:cc:dd:ee:02", sandbox: "/run/netns/p" },
  ],
  ips: [
    { address: "10.1.0.5/16", gateway: "10.1.0.1", interface: 1 },
    { address: "fd00::5/64", gateway: "fd00::1", interface: 1 },
  ],
  routes: [{ dst: "0.0.0.0/0", gw: "10.1.0.1" }, { dst: "::/0" }],
  dns: { nameservers: ["10.96.0.10"], search: ["svc.cluster.local"] },
};

describe("CNI results", () => {
  it("parses 1.0.0 into the model with interface indexes, gateways, routes and DNS", () => {
    const r = parseResult(v1);
    assert.equal(r.cniVersion, "1.0.0");
    assert.equal(r.interfaces[r.ips[0]!.interface!]!.sandbox, "/run/netns/p");
    assert.equal(r.ips[1]!.gateway, "fd00::1");
    assert.deepEqual(r.routes[1], { dst: "::/0" });
    assert.deepEqual(r.dns.nameservers, ["10.96.0.10"]);
  });

  for (const version of ["0.3.0", "0.3.1", "0.4.0"] as const) {
    it(`converts to ${version} with ips[].version, and back without loss`, () => {
      const wire = toWire(parseResult(v1), version);
      assert.equal(wire.cniVersion, version);
      const ips = wire.ips as { version: string }[];
      assert.deepEqual(
        ips.map((i) => i.version),
        ["4", "6"],
      );
      const back = parseResult(wire);
      assert.deepEqual(convertResult(back, "1.0.0"), parseResult(v1));
    });
  }

  it("parses 0.3.1 and requires its ips[].version to match the address", () => {
    const old = {
      ...v1,
      cniVersion: "0.3.1",
      ips: [{ version: "4", address: "10.1.0.5/16", interface: 1 }],
    };
    assert.equal(parseResult(old).ips[0]!.address, "10.1.0.5/16");
    assert.throws(
      () => parseResult({ ...old, ips: [{ version: "6", address: "10.1.0.5/16" }] }),
      /does not match/,
    );
    assert.throws(
      () => parseResult({ ...old, ips: [{ address: "10.1.0.5/16" }] }),
      /version must be/,
    );
  });

  it("keeps 1.1.0's route and interface fields at 1.1.0 and drops them below", () => {
    const r = parseResult({
      ...v1,
      cniVersion: "1.1.0",
      interfaces: [{ name: "eth0", mtu: 1400, sandbox: "/run/netns/p" }],
      ips: [{ address: "10.1.0.5/16", interface: 0 }],
      routes: [
        { dst: "10.2.0.0/16", gw: "10.1.0.1", mtu: 1300, priority: 10, table: 100, scope: 0 },
      ],
    });
    assert.equal(r.interfaces[0]!.mtu, 1400);
    assert.equal(r.routes[0]!.table, 100);
    const down = toWire(r, "1.0.0");
    assert.deepEqual(down.routes, [{ dst: "10.2.0.0/16", gw: "10.1.0.1" }]);
    assert.deepEqual(down.interfaces, [{ name: "eth0", sandbox: "/run/netns/p" }]);
    assert.deepEqual((toWire(r, "1.1.0").routes as unknown[])[0], r.routes[0]);
  });

  for (const [why, result, message] of [
    ["an address without prefix", { ips: [{ address: "10.1.0.5" }] }, /not a CIDR/],
    [
      "an interface index out of range",
      { ips: [{ address: "10.1.0.5/16", interface: 3 }] },
      /not an index/,
    ],
    [
      "a gateway of the wrong family",
      { ips: [{ address: "10.1.0.5/16", gateway: "fd00::1" }] },
      /gateway/,
    ],
    ["a route without dst", { routes: [{ gw: "10.1.0.1" }] }, /routes\[0\]\.dst/],
    ["an interface without name", { interfaces: [{ mac: "x" }] }, /interfaces\[0\]\.name/],
    ["an unknown version", { cniVersion: "7.0.0" }, /unsupported cniVersion/],
  ] as const) {
    it(`rejects a result with ${why}`, () => {
      assert.throws(() => parseResult({ cniVersion: "1.0.0", ...result }), message);
    });
  }
});
