// The pod bridge keeps the guest's MAC on the tap whatever the node bridge reflects: its
// veth port does not learn and the guest's MAC is a static FDB entry on the tap. Rewiring
// again (recover() after a restart) puts both back, and the guest gets its lease on
// Flannel's stock hairpin config afterwards.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Tapmanager } from "../../src/tapmanager";
import type { PodNetwork } from "../../src/tapmanager/types";
import { makePod } from "../harness/cni-fixtures";
import { ip, requirePrivateNamespace } from "../harness/fixtures";
import { startDhcpClient } from "../harness/guest-clients";
import { makePodNode, type PodNode, removePodNode } from "../harness/pod-node";
import { startRelay } from "../harness/relay";
import { stockConflist } from "../harness/stock-cni";

requirePrivateNamespace();

function bridgeJson<T>(netns: string, ...args: string[]): T {
  return JSON.parse(
    execFileSync("bridge", ["-n", netns, "-j", ...args], { encoding: "utf8" }),
  ) as T;
}

/** What a user checks with `bridge link` and `bridge fdb` in the pod netns. */
function podBridgeState(network: PodNetwork) {
  const netns = path.basename(network.netnsPath);
  const [eth0] = network.interfaces;
  const ports = bridgeJson<{ ifname: string; learning?: boolean }[]>(netns, "-d", "link", "show");
  const fdb = bridgeJson<{ mac: string; ifname: string; state?: string; flags?: string[] }[]>(
    netns,
    "fdb",
    "show",
    "br",
    eth0.bridge,
  );
  return {
    vethLearning: ports.find((p) => p.ifname === eth0.ifname)?.learning,
    tapLearning: ports.find((p) => p.ifname === eth0.tap)?.learning,
    guestEntries: fdb
      .filter((e) => e.mac === eth0.guestMac)
      .map((e) => ({ ifname: e.ifname, state: e.state ?? "" })),
  };
}

const PINNED = {
  vethLearning: false,
  tapLearning: true,
  guestEntries: [{ ifname: "tap-eth0", state: "static" }],
};

describe("hairpin-safe rewiring", () => {
  let node: PodNode;
  before(async () => {
    node = await makePodNode({ conflist: () => stockConflist("flannel.conflist") });
  });
  after(async () => {
    await removePodNode(node);
    if (ip("-j", "link", "show").includes('"ifname":"cni0"')) ip("link", "del", "cni0");
  });

  it("pins the guest's MAC to the tap and keeps the veth from learning, again after recover()", async () => {
    const pod = makePod();
    const stateDir = path.join(node.cni.root, "pods");
    const network = await node.tapmanager.setUp({ pod });
    assert.deepEqual(podBridgeState(network), PINNED);

    // Undone by hand, and the guest's MAC learned on the veth, as a reflected frame leaves it.
    const netns = path.basename(network.netnsPath);
    const [eth0] = network.interfaces;
    execFileSync("bridge", ["-n", netns, "link", "set", "dev", "eth0", "learning", "on"]);
    execFileSync("bridge", ["-n", netns, "fdb", "replace", eth0.guestMac, "dev", "eth0", "master"]);
    assert.notDeepEqual(podBridgeState(network), PINNED);

    // A restart: a second tapmanager on the same state re-attaches the pod.
    await node.tapmanager.close();
    const second = new Tapmanager({ cni: node.cni.client(), stateDir });
    try {
      const outcome = await second.recover();
      assert.deepEqual(outcome.recovered, [pod.sandboxId]);
      assert.deepEqual(podBridgeState(network), PINNED);
      // And once more: rewiring an already pinned pod changes nothing.
      await second.close();
      assert.deepEqual((await second.recover()).recovered, [pod.sandboxId]);
      assert.deepEqual(podBridgeState(network), PINNED);

      // The guest, behind the hairpin node bridge, gets its lease.
      const [tap] = second.openTaps(pod.sandboxId);
      const guest = await startRelay({ podTapFd: tap.fd, mac: tap.guestMac });
      fs.closeSync(tap.fd);
      const client = await startDhcpClient("udhcpc", { netns: guest.netns, ifname: guest.ifname });
      try {
        const state = await client.waitForLease({ timeoutMs: 15_000 });
        assert.deepEqual(state.addresses, [`${eth0.addresses[0].address}/24`]);
      } finally {
        await client.stop();
        await guest.stop();
      }
    } finally {
      await second.tearDown(pod.sandboxId);
      await second.close();
    }
  });
});
