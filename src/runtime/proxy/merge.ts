// How the answers of vmlet and containerd become one answer for kubelet: Status with
// each condition true only when both sides say so (and the message naming the side that
// does not), the image filesystems with containerd's first.

import { errorMessage } from "../../util/errors";
import type * as cri from "../cri/generated";

/** The conditions kubelet requires; a side that does not report one is not ready. */
const REQUIRED_CONDITIONS = ["RuntimeReady", "NetworkReady"];

export interface Side<T> {
  name: string;
  /** The side's answer, or why it gave none. */
  answer: T | Error;
}

/** Each condition ANDed over the sides; reason and message say which side is not ready. */
export function mergeStatus(
  sides: Side<cri.StatusResponse>[],
  vmHandlers: string[],
): cri.StatusResponse {
  const types = new Set(REQUIRED_CONDITIONS);
  for (const s of sides) {
    if (s.answer instanceof Error) continue;
    for (const c of s.answer.status?.conditions ?? []) if (c.type) types.add(c.type);
  }
  const conditions: cri.RuntimeCondition[] = [...types].map((type) => {
    const notReady: { side: string; reason: string; message: string }[] = [];
    for (const s of sides) {
      if (s.answer instanceof Error) {
        notReady.push({
          side: s.name,
          reason: `${capitalized(s.name)}Unreachable`,
          message: errorMessage(s.answer),
        });
        continue;
      }
      const c = s.answer.status?.conditions?.find((x) => x.type === type);
      // A condition only one side knows (beyond the required ones) is that side's alone.
      if (!c && !REQUIRED_CONDITIONS.includes(type)) continue;
      if (!c?.status) {
        notReady.push({
          side: s.name,
          reason: c?.reason || "NotReported",
          message: c?.message || `${s.name} does not report ${type}`,
        });
      }
    }
    return {
      type,
      status: notReady.length === 0,
      reason: notReady.map((n) => `${n.side}: ${n.reason}`).join("; "),
      message: notReady.map((n) => `${n.side}: ${n.message}`).join("; "),
    };
  });
  const info: Record<string, string> = {};
  const runtimeHandlers: cri.RuntimeHandler[] = [];
  for (const s of sides) {
    if (s.answer instanceof Error) continue;
    for (const [key, value] of Object.entries(s.answer.info ?? {}))
      info[`${s.name}.${key}`] = value;
    if (s.name === "vmlet") {
      const features = s.answer.runtimeHandlers?.[0]?.features;
      for (const name of vmHandlers) runtimeHandlers.push({ name, features });
    } else runtimeHandlers.push(...(s.answer.runtimeHandlers ?? []));
  }
  return { status: { conditions }, info, runtimeHandlers };
}

/** containerd's filesystems first: kubelet's image GC and eviction watch only the first. */
export function mergeImageFs(
  containerd: cri.ImageFsInfoResponse,
  vmlet: cri.ImageFsInfoResponse,
): cri.ImageFsInfoResponse {
  return {
    imageFilesystems: [...(containerd.imageFilesystems ?? []), ...(vmlet.imageFilesystems ?? [])],
    containerFilesystems: [
      ...(containerd.containerFilesystems ?? []),
      ...(vmlet.containerFilesystems ?? []),
    ],
  };
}

function capitalized(name: string): string {
  return name.charAt(0).toUpperCase() + name.slice(1);
}
