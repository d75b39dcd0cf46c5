// The tapmanager end to end: for each network style and each real DHCP client (in a relay
// guest behind the pod's tap, and in a tiny VM on it), the guest's lease equals what CNI
// gave the pod, it reaches its gateway and a second pod, the second pod reaches it, and a
// renewal and a rebind are answered.
import { after, before, describe, it } from "node:test";
import { requirePrivateNamespace } from "../harness/fixtures";
import type { DhcpClientKind } from "../harness/guest-clients";
import { guestImagesBuilt } from "../harness/guest-vm";
import { NETWORK_STYLES } from "../harness/network-styles";
import {
  checkRelayGuest,
  checkVmGuest,
  makePodNode,
  type PodNode,
  removePodNode,
} from "../harness/pod-node";

requirePrivateNamespace();

const STYLES = NETWORK_STYLES;

for (const style of STYLES) {
  describe(`a pod on a ${style.name} network`, () => {
    let node: PodNode;
    before(async () => {
      node = await makePodNode(style);
    });
    after(async () => {
      await removePodNode(node);
    });

    for (const kind of ["udhcpc", "dhclient", "dhcpcd"] as DhcpClientKind[]) {
      it(`gives ${kind} in a relay guest the CNI lease, reachability, renewal and rebind`, () =>
        checkRelayGuest(node, style, kind, { rebind: true }));
    }

    it(
      "gives a tiny VM (udhcpc with Debian's stock script) the CNI lease, reachability, renewal and rebind",
      {
        skip: !guestImagesBuilt() && "test guests not built (scripts/build-test-guests.sh)",
      },
      () => checkVmGuest(node, style, { rebind: true }),
    );
  });
}
