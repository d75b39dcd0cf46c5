// The cloud-init NoCloud seed: an ISO 9660 volume labelled "cidata" holding meta-data,
// user-data and network-config. The file contents are a pure function of the spec; the
// ISO is made by genisoimage.
import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import type { CloudInit, VmTap } from "./types";

const execFileAsync = promisify(execFile);

export interface SeedFiles {
  "meta-data": string;
  "user-data": string;
  "network-config": string;
}

// Every scalar is written as a JSON string, which YAML reads as a double-quoted scalar:
// no value from a pod spec can break out of its place in the document.
const q = (value: string): string => JSON.stringify(value);

/** The merge that lets vmlet's part add keys and files to a user's #cloud-config. */
const MERGE_TYPE = "list(append)+dict(recurse_array,no_replace)+str()";

export function buildSeedFiles(cloudInit: CloudInit, taps: VmTap[]): SeedFiles {
  return {
    "meta-data": `instance-id: ${q(cloudInit.instanceId)}\nlocal-hostname: ${q(cloudInit.hostname)}\n`,
    "user-data": userData(cloudInit),
    "network-config": networkConfig(taps),
  };
}

function generatedCloudConfig(cloudInit: CloudInit): string {
  const lines = ["#cloud-config"];
  const keys = cloudInit.sshKeys ?? [];
  if (keys.length) {
    lines.push("ssh_authorized_keys:", ...keys.map((k) => `  - ${q(k.trim())}`));
  }
  if (cloudInit.files.length) {
    lines.push("write_files:");
    for (const file of cloudInit.files) {
      lines.push(`  - path: ${q(file.path)}`);
      lines.push("    encoding: b64");
      lines.push(`    content: ${q(Buffer.from(file.content).toString("base64"))}`);
      if (file.permissions !== undefined) lines.push(`    permissions: ${q(file.permissions)}`);
    }
  }
  return `${lines.join("\n")}\n`;
}

/**
 * The user's user-data when there is nothing to add; vmlet's cloud-config alone when the
 * user gave none; otherwise a MIME multipart with both, which cloud-init merges.
 */
function userData(cloudInit: CloudInit): string {
  const ours = generatedCloudConfig(cloudInit);
  const theirs = cloudInit.userData;
  if (theirs === undefined || theirs.trim() === "") return ours;
  const nothingToAdd = !(cloudInit.sshKeys ?? []).length && !cloudInit.files.length;
  if (nothingToAdd) return theirs;
  const boundary = `vmlet-${cloudInit.instanceId.replace(/[^A-Za-z0-9]/g, "").slice(0, 32)}-part`;
  return [
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    "MIME-Version: 1.0",
    "",
    `--${boundary}`,
    `Content-Type: ${userDataType(theirs)}; charset="utf-8"`,
    'Content-Disposition: attachment; filename="user-data"',
    "",
    theirs.endsWith("\n") ? theirs : `${theirs}\n`,
    `--${boundary}`,
    'Content-Type: text/cloud-config; charset="utf-8"',
    'Content-Disposition: attachment; filename="vmlet.cfg"',
    `Merge-Type: ${MERGE_TYPE}`,
    "",
    ours,
    `--${boundary}--`,
    "",
  ].join("\n");
}

/** cloud-init's own mapping from a user-data's first line to its part type. */
function userDataType(text: string): string {
  const first = text.trimStart();
  if (first.startsWith("#cloud-config")) return "text/cloud-config";
  if (first.startsWith("#!")) return "text/x-shellscript";
  if (first.startsWith("#include")) return "text/x-include-url";
  if (first.startsWith("#cloud-boothook")) return "text/cloud-boothook";
  if (first.startsWith("## template: jinja")) return "text/jinja2";
  return "text/plain";
}

/** Network config v2: DHCPv4 on every NIC, matched by the MAC vmlet gave it. */
function networkConfig(taps: VmTap[]): string {
  const lines = ["version: 2", "ethernets:"];
  for (const tap of taps) {
    lines.push(`  ${q(tap.ifname)}:`);
    lines.push("    match:");
    lines.push(`      macaddress: ${q(tap.guestMac.toLowerCase())}`);
    lines.push("    dhcp4: true");
  }
  if (!taps.length) lines[1] = "ethernets: {}";
  return `${lines.join("\n")}\n`;
}

/** Writes the seed ISO at `isoPath` (label cidata, Joliet and Rock Ridge names). */
export async function writeSeedIso(isoPath: string, files: SeedFiles): Promise<void> {
  const staging = `${isoPath}.d`;
  await fs.promises.rm(staging, { recursive: true, force: true });
  await fs.promises.mkdir(staging, { recursive: true });
  try {
    for (const [name, content] of Object.entries(files)) {
      await fs.promises.writeFile(path.join(staging, name), content, { mode: 0o600 });
    }
    const tmp = `${isoPath}.tmp`;
    await execFileAsync(
      "genisoimage",
      ["-quiet", "-output", tmp, "-volid", "cidata", "-joliet", "-rock", staging],
      { encoding: "utf8" },
    );
    await fs.promises.chmod(tmp, 0o600); // it may carry the pod's Secrets
    await fs.promises.rename(tmp, isoPath);
  } finally {
    await fs.promises.rm(staging, { recursive: true, force: true });
  }
}
