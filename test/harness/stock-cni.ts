// The stock conflists of test/fixtures/stock-cni (see its README), loaded as written, and
// the one change a row may need here: Calico's own plugin, which needs a datastore and
// felix, gives way to the Calico-style fixture; the rest of its chain stays as written.
import fs from "node:fs";
import path from "node:path";
import { calicoPluginInto } from "./calico-plugin";
import type { CniSandbox } from "./cni-fixtures";

const FIXTURES = path.join(__dirname, "../../../test/fixtures/stock-cni");

export type Conflist = { plugins: Record<string, unknown>[] } & Record<string, unknown>;

export function stockConflist(file: string): Conflist {
  return JSON.parse(fs.readFileSync(path.join(FIXTURES, file), "utf8")) as Conflist;
}

/** calico.conflist with its `calico` plugin (and calico-ipam) replaced by the fixture. */
export function stockCalico(cni: CniSandbox, subnet: string): Conflist {
  const conf = stockConflist("calico.conflist");
  const { ipam: _ipam, type: _type, ...calico } = conf.plugins[0];
  const fixture = {
    ...calico,
    type: calicoPluginInto(cni.binDir),
    ipam: { type: "host-local", ranges: [[{ subnet }]] },
  };
  return { ...conf, plugins: [fixture, ...conf.plugins.slice(1)] };
}
