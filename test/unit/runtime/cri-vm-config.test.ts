// How big a pod's VM is and what its cloud-init seed carries, from annotations,
// resources and mounts.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { filesFromMount, isCopiedVolume, sshKeys, vmSize } from "../../../src/runtime/vm-config";

describe("VM size", () => {
  test("defaults: 1 vCPU, 512 MiB", () => {
    assert.deepEqual(vmSize({}, undefined), { vcpus: 1, memoryMiB: 512 });
  });

  test("from resources: CPU quota over period rounded up, memory limit in MiB", () => {
    assert.deepEqual(
      vmSize({}, { cpuQuota: "150000", cpuPeriod: "100000", memoryLimitInBytes: "268435456" }),
      {
        vcpus: 2,
        memoryMiB: 256,
      },
    );
  });

  test("annotations win over resources; memory takes Mi, Gi, a bare MiB number and decimal units", () => {
    const r = { cpuQuota: 400000, cpuPeriod: 100000, memoryLimitInBytes: 1 << 30 };
    assert.deepEqual(vmSize({ "vmlet.io/vcpus": "2", "vmlet.io/memory": "2Gi" }, r), {
      vcpus: 2,
      memoryMiB: 2048,
    });
    assert.equal(vmSize({ "vmlet.io/memory": "768" }, r).memoryMiB, 768);
    assert.equal(vmSize({ "vmlet.io/memory": "1G" }, r).memoryMiB, 954);
  });

  test("bad annotations are refused, naming the annotation and what is wanted", () => {
    assert.throws(
      () => vmSize({ "vmlet.io/vcpus": "0" }, undefined),
      /vmlet\.io\/vcpus="0": want a whole number 1\.\.64/,
    );
    assert.throws(() => vmSize({ "vmlet.io/vcpus": "1.5" }, undefined), /vmlet\.io\/vcpus/);
    assert.throws(
      () => vmSize({ "vmlet.io/memory": "lots" }, undefined),
      /vmlet\.io\/memory="lots": want a size/,
    );
    assert.throws(() => vmSize({ "vmlet.io/memory": "1Mi" }, undefined), /at least 32Mi/);
  });
});

describe("cloud-init inputs", () => {
  test("ssh keys: one a line, blanks and comments dropped", () => {
    assert.deepEqual(
      sshKeys({ "vmlet.io/ssh-keys": "ssh-ed25519 AAA a@b\n\n# old\nssh-rsa BBB c@d\n" }),
      ["ssh-ed25519 AAA a@b", "ssh-rsa BBB c@d"],
    );
    assert.equal(sshKeys({}), undefined);
  });

  test("Secret, ConfigMap and projected volumes are copied; host paths are not", () => {
    assert.ok(isCopiedVolume("/var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/creds"));
    assert.ok(isCopiedVolume("/var/lib/kubelet/pods/u/volumes/kubernetes.io~configmap/cfg"));
    assert.ok(
      isCopiedVolume("/var/lib/kubelet/pods/u/volumes/kubernetes.io~projected/kube-api-access-x"),
    );
    assert.ok(!isCopiedVolume("/var/lib/kubelet/pods/u/etc-hosts"));
    assert.ok(!isCopiedVolume("/data"));
  });

  test("a Secret volume's files land at the container path, through kubelet's ..data links, modes kept", () => {
    const vol = fs.mkdtempSync(path.join(os.tmpdir(), "secret-"));
    const data = path.join(vol, "..2026_11_23");
    fs.mkdirSync(data);
    fs.writeFileSync(path.join(data, "password"), "s3cret");
    fs.writeFileSync(path.join(data, "bin"), Buffer.from([0, 1, 2, 255]));
    fs.chmodSync(path.join(data, "password"), 0o400);
    fs.symlinkSync("..2026_11_23", path.join(vol, "..data"));
    fs.symlinkSync("..data/password", path.join(vol, "password"));
    fs.symlinkSync("..data/bin", path.join(vol, "bin"));
    const files = filesFromMount({ hostPath: vol, containerPath: "/etc/creds" });
    assert.deepEqual(
      files.map((f) => [f.path, f.permissions]),
      [
        ["/etc/creds/bin", "0644"],
        ["/etc/creds/password", "0400"],
      ],
    );
    assert.deepEqual(files[0].content, Buffer.from([0, 1, 2, 255]), "binary content kept");
    assert.equal(files[1].content.toString(), "s3cret");
  });

  test("subPath mounts of Secret and ConfigMap volumes are copied, a single file as that file; other volumes' are not", () => {
    // kubelet's layout under a --root-dir other than /var/lib/kubelet.
    const pod = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "kubelet-")), "pods", "uid-1");
    const volume = (type: string, name: string) => {
      const dir = path.join(pod, "volumes", `kubernetes.io~${type}`, name);
      fs.mkdirSync(dir, { recursive: true });
      return dir;
    };
    volume("secret", "creds");
    volume("configmap", "cfg");
    volume("empty-dir", "scratch");
    // What kubelet bind-mounts for each subPath: the file or directory inside the volume.
    const subPath = (name: string, index: number, fill: (p: string) => void) => {
      const p = path.join(pod, "volume-subpaths", name, "app", String(index));
      fs.mkdirSync(path.dirname(p), { recursive: true });
      fill(p);
      return p;
    };
    const mounts = [
      {
        hostPath: subPath("creds", 0, (p) => fs.writeFileSync(p, "s3cret", { mode: 0o400 })),
        containerPath: "/etc/app/password",
      },
      {
        hostPath: subPath("cfg", 1, (p) => {
          fs.mkdirSync(p);
          fs.writeFileSync(path.join(p, "app.conf"), "x=1\n");
        }),
        containerPath: "/etc/app/conf.d",
      },
      {
        hostPath: subPath("scratch", 2, (p) => fs.writeFileSync(p, "not for the seed")),
        containerPath: "/tmp/scratch",
      },
      {
        hostPath: subPath("host-vol", 3, (p) => fs.writeFileSync(p, "not for the seed")),
        containerPath: "/tmp/host",
      },
    ];
    const files = mounts.filter((m) => isCopiedVolume(m.hostPath)).flatMap(filesFromMount);
    assert.deepEqual(
      files.map((f) => [f.path, f.content.toString(), f.permissions]),
      [
        ["/etc/app/password", "s3cret", "0400"],
        ["/etc/app/conf.d/app.conf", "x=1\n", "0644"],
      ],
    );
  });
});
