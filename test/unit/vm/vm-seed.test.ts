import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { buildSeedFiles, writeSeedIso } from "../../../src/runtime/vm/seed";
import type { CloudInit, VmTap } from "../../../src/runtime/vm/types";

const taps: VmTap[] = [
  { ifname: "eth0", tap: "tap0", fd: 3, guestMac: "0A:58:0A:F4:00:05", mtu: 1450 },
  { ifname: "net1", tap: "tap1", fd: 4, guestMac: "02:00:00:00:00:01", mtu: 1500 },
];

const cloudInit: CloudInit = {
  instanceId: "c0ffee",
  hostname: "web-0",
  sshKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx user@host\n"],
  files: [
    {
      path: "/etc/config/app.conf",
      content: 'key: "value"\n# not a comment: here',
      permissions: "0644",
    },
    { path: "/var/run/secrets/token", content: Buffer.from([0, 1, 2, 255]) },
  ],
};

/** Parses YAML with PyYAML (cloud-init's own parser; Debian's python3-yaml), as JSON. */
function yaml(text: string): unknown {
  const script = "import sys, yaml, json; print(json.dumps(yaml.safe_load(sys.stdin.read())))";
  return JSON.parse(
    execFileSync("/usr/bin/python3", ["-c", script], { input: text, encoding: "utf8" }),
  );
}

describe("the cloud-init NoCloud seed", () => {
  it("names the instance and host in meta-data", () => {
    assert.deepEqual(yaml(buildSeedFiles(cloudInit, taps)["meta-data"]), {
      "instance-id": "c0ffee",
      "local-hostname": "web-0",
    });
  });

  it("writes every file base64-encoded with write_files, and the SSH keys", () => {
    const userData = buildSeedFiles(cloudInit, taps)["user-data"];
    assert.ok(userData.startsWith("#cloud-config\n"));
    const config = yaml(userData) as {
      ssh_authorized_keys: string[];
      write_files: { path: string; encoding: string; content: string; permissions?: string }[];
    };
    assert.deepEqual(config.ssh_authorized_keys, [
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx user@host",
    ]);
    assert.equal(config.write_files.length, 2);
    const [conf, token] = config.write_files;
    assert.equal(conf!.path, "/etc/config/app.conf");
    assert.equal(conf!.encoding, "b64");
    assert.equal(
      Buffer.from(conf!.content, "base64").toString(),
      'key: "value"\n# not a comment: here',
    );
    assert.equal(conf!.permissions, "0644");
    assert.deepEqual([...Buffer.from(token!.content, "base64")], [0, 1, 2, 255]);
    assert.equal(token!.permissions, undefined);
  });

  it("asks for DHCP on each NIC matched by its MAC in network-config v2", () => {
    assert.deepEqual(yaml(buildSeedFiles(cloudInit, taps)["network-config"]), {
      version: 2,
      ethernets: {
        eth0: { match: { macaddress: "0a:58:0a:f4:00:05" }, dhcp4: true },
        net1: { match: { macaddress: "02:00:00:00:00:01" }, dhcp4: true },
      },
    });
  });

  it("passes a user's user-data through unchanged when there is nothing to add", () => {
    const mine = "#!/bin/sh\necho hello\n";
    const files = buildSeedFiles(
      { instanceId: "i", hostname: "h", userData: mine, files: [] },
      taps,
    );
    assert.equal(files["user-data"], mine);
  });

  it("merges keys and files into a user's user-data as a MIME multipart cloud-init reads", () => {
    const mine = "#cloud-config\npackages: [nginx]\n";
    const userData = buildSeedFiles({ ...cloudInit, userData: mine }, taps)["user-data"];
    const boundary = /boundary="([^"]+)"/.exec(userData)?.[1];
    assert.ok(boundary, userData);
    const parts = userData.split(`--${boundary}`).slice(1, -1);
    assert.equal(parts.length, 2);
    assert.match(parts[0]!, /Content-Type: text\/cloud-config/);
    assert.ok(parts[0]!.includes(mine));
    assert.match(
      parts[1]!,
      /Merge-Type: list\(append\)\+dict\(recurse_array,no_replace\)\+str\(\)/,
    );
    assert.match(parts[1]!, /write_files:/);
    assert.ok(userData.trimEnd().endsWith(`--${boundary}--`));
  });

  it("is an ISO labelled cidata with meta-data, user-data and network-config readable by name", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vm-seed-"));
    try {
      const iso = path.join(dir, "seed.iso");
      const files = buildSeedFiles(cloudInit, taps);
      await writeSeedIso(iso, files);
      const info = execFileSync("isoinfo", ["-d", "-i", iso], { encoding: "utf8" });
      assert.match(info, /^Volume id: cidata$/m);
      assert.match(info, /Joliet/);
      assert.match(info, /Rock Ridge/);
      for (const [name, content] of Object.entries(files)) {
        const read = execFileSync("isoinfo", ["-J", "-i", iso, "-x", `/${name}`], {
          encoding: "utf8",
        });
        assert.equal(read, content, name);
      }
      assert.equal(fs.statSync(iso).mode & 0o777, 0o600, "the seed may hold Secrets");
      assert.deepEqual(fs.readdirSync(dir), ["seed.iso"], "no staging files left");
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
