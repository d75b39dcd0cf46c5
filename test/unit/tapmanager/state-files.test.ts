// The state files of the pod networks and of the CNI cache are written the way the
// runtime's records are: temp file, fsync, rename, fsync of the directory; temp files a
// crash left are removed when the store is opened.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, it } from "node:test";
import { ResultCache } from "../../../src/cni-bridge/cni/cache";
import { PodStateStore } from "../../../src/tapmanager/state";

const DIST = path.resolve(__dirname, "../../..");

function withDir(fn: (dir: string) => Promise<void>) {
  return async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "state-files-"));
    try {
      await fn(dir);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };
}

/** Runs `script` under strace; the file-system calls it made on paths under `dir`. */
function traced(dir: string, script: string): string[] {
  return joinSplitCalls(
    straceLines(
      dir,
      script,
      "openat,fsync,fdatasync,rename,renameat,renameat2,close,unlink,unlinkat",
    ),
  );
}

/** strace's lines for `calls` made by `script` and its children, as strace wrote them. */
function straceLines(dir: string, script: string, calls: string): string[] {
  const out = path.join(dir, "strace.out");
  execFileSync("strace", [
    "-f",
    "-qq",
    "-e",
    `trace=${calls}`,
    "-o",
    out,
    process.execPath,
    "-e",
    script,
  ]);
  return fs.readFileSync(out, "utf8").split("\n");
}

/**
 * Index of the first line where a process got data from its stdin: a read(0, ...) that
 * returned bytes, whole or resumed (strace splits a read another process interrupts).
 */
function firstStdinData(lines: string[]): number {
  const pendingFd = new Map<string, string>();
  return lines.findIndex((line) => {
    const whole = /^(\d+)\s+read\((\d+), "/.exec(line);
    if (whole) return whole[2] === "0" && /\)\s+= [1-9]\d*$/.test(line);
    const started = /^(\d+)\s+read\((\d+),\s*<unfinished/.exec(line);
    if (started) pendingFd.set(started[1]!, started[2]!);
    const resumed = /^(\d+)\s+<\.\.\. read resumed>.*\)\s+= [1-9]\d*$/.exec(line);
    return resumed !== null && pendingFd.get(resumed[1]!) === "0";
  });
}

/** Indexes of the lines where an fsync returned 0, whole or resumed. */
function fsyncsDone(lines: string[]): number[] {
  return lines.flatMap((line, i) =>
    /^\d+\s+(fsync\(\d+\)|<\.\.\. fsync resumed>\))\s+= 0$/.test(line) ? [i] : [],
  );
}

/**
 * strace splits a call that another thread's call interrupts ("fsync(19 <unfinished
 * ...>", later "<... fsync resumed>) = 0"), as the thread pool's fsyncs often are: each
 * is put back together, on the line where it started.
 */
function joinSplitCalls(lines: string[]): string[] {
  // A joined call keeps strace's padding before its "= result": match it with \s+.
  const out: string[] = [];
  const open = new Map<string, number>();
  for (const line of lines) {
    const started = /^(\d+)\s+(.*) <unfinished \.\.\.>$/.exec(line);
    const resumed = /^(\d+)\s+<\.\.\. \w+ resumed>(.*)$/.exec(line);
    if (started) {
      open.set(started[1]!, out.length);
      out.push(`${started[1]} ${started[2]}`);
    } else if (resumed && open.has(resumed[1]!)) {
      const at = open.get(resumed[1]!)!;
      out[at] += resumed[2];
      open.delete(resumed[1]!);
    } else {
      out.push(line);
    }
  }
  return out;
}

/** Whether `dir` itself was opened and fsynced (fds are the process's, whichever thread). */
function dirFsynced(lines: string[], dir: string): boolean {
  const fds = new Set<string>();
  for (const line of lines) {
    const open = new RegExp(`openat\\(AT_FDCWD, "${dir}", [^)]*\\)\\s+= (\\d+)`).exec(line);
    if (open) fds.add(open[1]!);
    const close = /close\((\d+)\)/.exec(line);
    if (close) fds.delete(close[1]!);
    const sync = /fsync\((\d+)\)\s+= 0/.exec(line);
    if (sync && fds.has(sync[1]!)) return true;
  }
  return false;
}

/** Whether the temp file renamed onto `file` was fsynced (by its fd) before the rename. */
function fsyncedBeforeRename(lines: string[], file: string): boolean {
  const synced = new Set<string>();
  const fds = new Map<string, string>();
  for (const line of lines) {
    const open = /openat\(AT_FDCWD, "([^"]+\.tmp)", [^)]*\)\s+= (\d+)/.exec(line);
    if (open) fds.set(open[2]!, open[1]!);
    const sync = /fsync\((\d+)\)\s+= 0/.exec(line);
    const temp = sync && fds.get(sync[1]!);
    if (temp) synced.add(temp);
    const close = /close\((\d+)\)/.exec(line);
    if (close) fds.delete(close[1]!);
    const rename = /rename\w*\((?:AT_FDCWD, )?"([^"]+)", (?:AT_FDCWD, )?"([^"]+)"/.exec(line);
    if (rename && rename[2] === file) return synced.has(rename[1]!);
  }
  return false;
}

const pod = (sandboxId: string) => ({
  version: 1,
  request: { pod: { namespace: "default", name: "p", uid: "u", sandboxId } },
  netnsName: `vmlet-${sandboxId}`,
  netnsPath: `/run/netns/vmlet-${sandboxId}`,
  hostname: "p",
  phase: "ready",
  interfaces: [],
});

describe("durable state files", () => {
  it(
    "a pod network record is fsynced, renamed into place, and its directory fsynced",
    withDir(async (dir) => {
      const pods = path.join(dir, "pods");
      const lines = traced(
        dir,
        `const { PodStateStore } = require(${JSON.stringify(`${DIST}/src/tapmanager/state.js`)});
         new PodStateStore(${JSON.stringify(pods)}).write(${JSON.stringify(pod("s1"))});`,
      );
      assert.ok(
        lines.some((l) => /rename.*\.tmp", .*pods\/s1\.json"/.test(l)),
        "renamed from a temp file",
      );
      assert.ok(dirFsynced(lines, pods), `no fsync of ${pods}:\n${lines.join("\n")}`);
      assert.deepEqual(fs.readdirSync(pods), ["s1.json"], "no temp file left");
    }),
  );

  it(
    "a CNI cache entry is fsynced, renamed into place, and its directory fsynced",
    withDir(async (dir) => {
      const cache = path.join(dir, "cni");
      const entry = {
        network: "net",
        containerId: "c1",
        ifname: "eth0",
        cniArgs: "",
        capabilities: {},
        config: {},
      };
      const lines = traced(
        dir,
        `const { ResultCache } = require(${JSON.stringify(`${DIST}/src/cni-bridge/cni/cache.js`)});
         new ResultCache(${JSON.stringify(cache)}).put(${JSON.stringify(entry)});`,
      );
      const containerDir = path.join(cache, "c1");
      assert.ok(
        fsyncedBeforeRename(lines, path.join(containerDir, "net:eth0.json")),
        `the data is not fsynced before the rename:\n${lines.join("\n")}`,
      );
      assert.ok(dirFsynced(lines, containerDir), `no fsync of ${containerDir}`);
      assert.ok(dirFsynced(lines, cache), `no fsync of ${cache} after making c1/`);
      assert.deepEqual(fs.readdirSync(containerDir), ["net:eth0.json"]);
    }),
  );

  it(
    "a setUp step replaces the pod's record by exchanging names (no flush in a replacing rename), and leaves no temp",
    withDir(async (dir) => {
      const pods = path.join(dir, "pods");
      const state = JSON.stringify(`${DIST}/src/tapmanager/state.js`);
      const lines = traced(
        dir,
        `const { PodStateStore } = require(${state});
         const store = new PodStateStore(${JSON.stringify(pods)});
         const record = ${JSON.stringify(pod("s1"))};
         store.writeStep({ ...record, phase: "creating" });
         store.writeStep({ ...record, phase: "wiring" });
         store.writeStep({ ...record, phase: "ready" });`,
      );
      const file = path.join(pods, "s1.json");
      const renames = lines.filter((l) => /rename/.test(l) && l.includes(`${file}"`));
      assert.equal(renames.length, 4, `the renames:\n${renames.join("\n")}`);
      // The first step has no record to exchange with: a plain rename to a new name.
      assert.match(renames[0]!, /RENAME_EXCHANGE\) = -1 ENOENT/);
      assert.match(renames[1]!, /^\d+\s+rename(at)?\(/);
      for (const exchanged of renames.slice(2)) assert.match(exchanged, /RENAME_EXCHANGE\)\s+= 0/);
      assert.equal(lines.filter((l) => /unlink/.test(l) && /\.tmp"/.test(l)).length, 2);
      const fds = lines
        .filter((l) => /openat\(/.test(l) && l.includes(pods))
        .map((l) => /\)\s+= (\d+)$/.exec(l)?.[1]);
      const fsyncs = lines.filter((l) => fds.some((fd) => l.includes(`fsync(${fd})`)));
      assert.deepEqual(fsyncs, [], "a step is not fsynced");
      assert.deepEqual(fs.readdirSync(pods), ["s1.json"], "no temp file left");
      assert.equal(new PodStateStore(pods).read("s1")?.phase, "ready");
    }),
  );

  it(
    "a CNI result replaces the durable entry by a plain rename, which ext4 flushes, never by an exchange",
    withDir(async (dir) => {
      const cache = path.join(dir, "cni");
      const entry = { network: "net", containerId: "c1", ifname: "eth0", cniArgs: "" };
      const lines = traced(
        dir,
        `const { ResultCache } = require(${JSON.stringify(`${DIST}/src/cni-bridge/cni/cache.js`)});
         const c = new ResultCache(${JSON.stringify(cache)});
         const e = { ...${JSON.stringify(entry)}, capabilities: {}, config: {} };
         c.put(e).then(() => c.putStep({ ...e, result: { cniVersion: "1.0.0" } }));`,
      );
      const file = path.join(cache, "c1", "net:eth0.json");
      const renames = lines.filter((l) => /rename/.test(l) && l.includes(`${file}"`));
      assert.equal(renames.length, 2, `the renames:\n${renames.join("\n")}`);
      assert.ok(!renames.some((l) => /RENAME_EXCHANGE/.test(l)), renames.join("\n"));
      assert.deepEqual(fs.readdirSync(path.join(cache, "c1")), ["net:eth0.json"]);
    }),
  );

  it(
    "an emptied record (a step a power cut cut short) is set aside as unreadable, not read as a pod",
    withDir(async (dir) => {
      const pods = path.join(dir, "pods");
      fs.mkdirSync(pods);
      fs.writeFileSync(path.join(pods, "s1.json"), "");
      const unreadable: string[] = [];
      const store = new PodStateStore(pods, (r) => unreadable.push(r.sandboxId));
      assert.equal(store.read("s1"), undefined);
      assert.deepEqual(unreadable, ["s1"]);
      assert.deepEqual(store.list(), []);
    }),
  );

  it(
    "a CNI plugin is given its config only once the attachment's record is durable, though it starts before",
    withDir(async (dir) => {
      // A plugin that only reads its config and answers: what is timed here is the
      // client's order, which does not depend on what the plugin then does.
      const bin = path.join(dir, "bin");
      const conf = path.join(dir, "net.d");
      fs.mkdirSync(bin);
      fs.mkdirSync(conf);
      fs.writeFileSync(
        path.join(bin, "reader"),
        `#!/bin/sh\ncat >/dev/null\necho '{"cniVersion":"1.0.0"}'\n`,
        { mode: 0o755 },
      );
      fs.writeFileSync(
        path.join(conf, "10-r.conflist"),
        JSON.stringify({ cniVersion: "1.0.0", name: "r", plugins: [{ type: "reader" }] }),
      );
      const cni = JSON.stringify(`${DIST}/src/cni-bridge/cni/index.js`);
      const lines = straceLines(
        dir,
        `const { CniClient } = require(${cni});
         const c = new CniClient({ confDir: ${JSON.stringify(conf)}, binDirs: [${JSON.stringify(bin)}],
           cacheDir: ${JSON.stringify(path.join(dir, "cache"))} });
         const pod = { namespace: "default", name: "p", uid: "u", sandboxId: "s1" };
         const go = () => c.status().ready
           ? c.addPod(pod, "/run/netns/none").then(() => c.close())
           : setTimeout(go, 10);
         go();`,
        "fsync,read",
      );
      const config = firstStdinData(lines);
      assert.ok(config > 0, `the plugin never read its config:\n${lines.join("\n")}`);
      const fsyncs = fsyncsDone(lines);
      // The entry, its new container dir, and the cache dir that got that dir.
      assert.ok(fsyncs.length >= 3, `fsyncs:\n${lines.join("\n")}`);
      assert.ok(
        fsyncs.every((i) => i < config),
        `an fsync of the record returned after the plugin read its config:\n${lines.join("\n")}`,
      );
    }),
  );

  it(
    "temp files a crash left are removed when each store is opened",
    withDir(async (dir) => {
      const pods = path.join(dir, "pods");
      fs.mkdirSync(pods);
      fs.writeFileSync(path.join(pods, "s1.json"), JSON.stringify(pod("s1")));
      fs.writeFileSync(path.join(pods, ".s1.json.0badf00d.tmp"), "{");
      const store = new PodStateStore(pods);
      await store.open();
      assert.deepEqual(fs.readdirSync(pods), ["s1.json"]);
      assert.equal(store.read("s1")?.phase, "ready");

      const cache = path.join(dir, "cni");
      const c1 = path.join(cache, "c1");
      fs.mkdirSync(c1, { recursive: true });
      const entry = { kind: "vmletCniCacheV1", network: "net", containerId: "c1", ifname: "eth0" };
      fs.writeFileSync(path.join(c1, "net:eth0.json"), JSON.stringify(entry));
      fs.writeFileSync(path.join(c1, ".net:eth1.json.0badf00d.tmp"), "{");
      fs.writeFileSync(path.join(c1, "net:eth1.json.tmp-1234-0badf00d"), "{"); // older vmlet's
      const entries = await new ResultCache(cache).list("c1");
      assert.deepEqual(
        entries.map((e) => e.ifname),
        ["eth0"],
      );
      assert.deepEqual(fs.readdirSync(c1), ["net:eth0.json"]);
    }),
  );
});
