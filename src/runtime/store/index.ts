// The state dir: every sandbox, container and image vmlet knows, one JSON file each.
import path from "node:path";
import { RecordStore } from "./record-store";
import type { ContainerRecord, ImageRecord, SandboxRecord } from "./records";

export { syncDir, writeFileAtomic } from "../../util/atomic-file";
export { RecordStore, type StoredRecord, StoreError } from "./record-store";
export type {
  ContainerPhase,
  ContainerRecord,
  DiskFormat,
  ImageRecord,
  MountRecord,
  SandboxPhase,
  SandboxRecord,
} from "./records";
export { checkStateDirDepth, vmDirFor } from "./vm-dir";

export interface StateStore {
  dir: string;
  sandboxes: RecordStore<SandboxRecord>;
  containers: RecordStore<ContainerRecord>;
  images: RecordStore<ImageRecord>;
}

export async function openStateStore(dir: string): Promise<StateStore> {
  return {
    dir,
    sandboxes: await RecordStore.open<SandboxRecord>("sandbox", path.join(dir, "sandboxes")),
    containers: await RecordStore.open<ContainerRecord>("container", path.join(dir, "containers")),
    images: await RecordStore.open<ImageRecord>("image", path.join(dir, "images")),
  };
}
