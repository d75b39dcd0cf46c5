// The store's durable writer is the one every vmlet state file uses (src/util).
export { syncDir, TEMP_SUFFIX, writeFileAtomic } from "../../util/atomic-file";
