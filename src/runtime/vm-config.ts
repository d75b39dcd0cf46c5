// How big a pod's VM is and what goes into its cloud-init seed, from the pod's
// annotations and the container's resources and mounts.
import fs from "node:fs";
import path from "node:path";
import { invalidArgument } from "./errors";
import type { CloudInitFile } from "./types";

export const ANNOTATION_VCPUS = "vmlet.io/vcpus";
export const ANNOTATION_MEMORY = "vmlet.io/memory";
export const ANNOTATION_USER_DATA = "vmlet.io/cloud-init-user-data";
export const ANNOTATION_SSH_KEYS = "vmlet.io/ssh-keys";

export const DEFAULT_VCPUS = 1;
export const DEFAULT_MEMORY_MIB = 512;
const MAX_VCPUS = 64;
const MIN_MEMORY_MIB = 32;
const MIB = 1024 * 1024;

const MEMORY_UNITS: Record<string, number> = {
  "": MIB, // a bare number is MiB: nobody means bytes for a VM
  Ki: 1024,
  Mi: MIB,
  Gi: 1024 * MIB,
  Ti: 1024 * 1024 * MIB,
  K: 1000,
  M: 1000 * 1000,
  G: 1000 * 1000 * 1000,
  T: 1000 * 1000 * 1000 * 1000,
};

export interface VmSize {
  vcpus: number;
  memoryMiB: number;
}

export interface ContainerResourcesInput {
  cpuPeriod?: string | number;
  cpuQuota?: string | number;
  memoryLimitInBytes?: string | number;
}

/** Annotations win over resources; resources over the defaults. */
export function vmSize(
  annotations: Record<string, string>,
  resources: ContainerResourcesInput | undefined,
): VmSize {
  let vcpus = DEFAULT_VCPUS;
  let memoryMiB = DEFAULT_MEMORY_MIB;
  const quota = Number(resources?.cpuQuota ?? 0);
  const period = Number(resources?.cpuPeriod ?? 0);
  if (quota > 0 && period > 0) vcpus = Math.min(MAX_VCPUS, Math.ceil(quota / period));
  const limit = Number(resources?.memoryLimitInBytes ?? 0);
  if (limit > 0) memoryMiB = Math.max(MIN_MEMORY_MIB, Math.ceil(limit / MIB));

  const v = annotations[ANNOTATION_VCPUS];
  if (v !== undefined) {
    const n = /^\d+$/.test(v.trim()) ? Number(v.trim()) : Number.NaN;
    if (!(n >= 1 && n <= MAX_VCPUS)) {
      throw invalidArgument(
        `annotation ${ANNOTATION_VCPUS}=${JSON.stringify(v)}: want a whole number 1..${MAX_VCPUS}`,
      );
    }
    vcpus = n;
  }
  const m = annotations[ANNOTATION_MEMORY];
  if (m !== undefined) {
    const match = /^(\d+)(Ki|Mi|Gi|Ti|K|M|G|T)?$/.exec(m.trim());
    const mib = match
      ? Math.ceil((Number(match[1]) * MEMORY_UNITS[match[2] ?? ""]) / MIB)
      : Number.NaN;
    if (!(mib >= MIN_MEMORY_MIB)) {
      throw invalidArgument(
        `annotation ${ANNOTATION_MEMORY}=${JSON.stringify(m)}: want a size such as 512Mi or 2Gi, at least ${MIN_MEMORY_MIB}Mi`,
      );
    }
    memoryMiB = mib;
  }
  return { vcpus, memoryMiB };
}

export function sshKeys(annotations: Record<string, string>): string[] | undefined {
  const raw = annotations[ANNOTATION_SSH_KEYS];
  if (raw === undefined) return undefined;
  return raw
    .split("\n")
    .map((k) => k.trim())
    .filter((k) => k !== "" && !k.startsWith("#"));
}

/** Secret, ConfigMap, projected and downward API volumes are copied into the guest. */
const COPIED_VOLUME_TYPES = ["secret", "configmap", "projected", "downward-api"];
const COPIED_VOLUME_RE = new RegExp(`/volumes/kubernetes\\.io~(${COPIED_VOLUME_TYPES.join("|")})/`);
/**
 * A subPath mount: kubelet bind-mounts the file or directory inside the volume at
 * <pods root>/<pod uid>/volume-subpaths/<volume>/<container>/<mount index>.
 */
const SUBPATH_RE = /^(.*\/pods)\/([^/]+)\/volume-subpaths\/([^/]+)\/[^/]+\/\d+\/?$/;
/** Seeds are small: a volume past this is refused rather than silently cut. */
const MAX_COPIED_BYTES = 4 * MIB;

export function isCopiedVolume(hostPath: string): boolean {
  if (COPIED_VOLUME_RE.test(hostPath)) return true;
  // The subPath's own path does not say the volume's type; the volume's directory does.
  const subPath = SUBPATH_RE.exec(hostPath);
  if (!subPath) return false;
  const [, podsRoot, uid, volume] = subPath;
  if ([uid, volume].some((name) => name === "." || name === "..")) return false;
  return COPIED_VOLUME_TYPES.some((type) =>
    fs.existsSync(path.join(podsRoot, uid, "volumes", `kubernetes.io~${type}`, volume)),
  );
}

/** Every file under the mount's host path, at its container path (kubelet's `..data` links followed). */
export function filesFromMount(mount: {
  hostPath: string;
  containerPath: string;
}): CloudInitFile[] {
  const out: CloudInitFile[] = [];
  let total = 0;
  const walk = (host: string, guest: string): void => {
    const st = fs.statSync(host);
    if (st.isDirectory()) {
      for (const name of fs.readdirSync(host).sort()) {
        if (name.startsWith("..")) continue; // kubelet's atomic-writer internals
        walk(path.join(host, name), path.posix.join(guest, name));
      }
    } else if (st.isFile()) {
      total += st.size;
      if (total > MAX_COPIED_BYTES) {
        throw invalidArgument(
          `mount ${mount.containerPath}: more than ${MAX_COPIED_BYTES} bytes to copy into the seed`,
        );
      }
      out.push({
        path: guest,
        content: fs.readFileSync(host),
        permissions: `0${(st.mode & 0o777).toString(8)}`,
      });
    }
  };
  walk(mount.hostPath, mount.containerPath);
  return out;
}
