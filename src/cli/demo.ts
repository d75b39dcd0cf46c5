// The built-in default: a demo node in a private namespace, one pod network built in it
// with the kernel layer, and a report of what was built.
import fs from "node:fs";
import { createNetns, deleteNetns } from "../sys/netns";
import { enterPrivateNamespace } from "../sys/private-namespace";
import { Rtnl } from "../sys/rtnl";
import { openTap } from "../sys/tap";

export async function runDemo(_args: string[]): Promise<number> {
  enterPrivateNamespace();
  console.log("demo: a private node namespace; nothing here touches the machine's network");
  const node = Rtnl.open("/proc/self/ns/net");
  await node.setUp("lo");
  const podNs = createNetns("demo-pod");
  const nodeNsFd = fs.openSync("/proc/self/ns/net", "r");
  const pod = Rtnl.open(podNs);
  try {
    // What a CNI plugin would leave: a veth with the pod's address and a default route.
    await pod.createVeth("eth0", "veth-demo", nodeNsFd);
    await node.addAddress("veth-demo", "10.88.0.1/24");
    await node.setUp("veth-demo");
    await pod.addAddress("eth0", "10.88.0.2/24");
    await pod.setUp("eth0");
    await pod.addRoute({ dst: "0.0.0.0", dstLength: 0, gateway: "10.88.0.1" });
    // What vmlet makes of it: a bridge joining the veth and a tap for the VM.
    await pod.deleteAddress("eth0", "10.88.0.2/24");
    await pod.createBridge("br-eth0");
    const tap = openTap(podNs, { name: "tap-eth0" });
    await pod.setMaster("eth0", "br-eth0");
    await pod.setMaster("tap-eth0", "br-eth0");
    for (const name of ["br-eth0", "tap-eth0"]) await pod.setUp(name);
    console.log(`demo: pod netns ${podNs}`);
    for (const link of await pod.links()) {
      const master = link.master ? ` master ${link.master}` : "";
      console.log(
        `  ${link.index}: ${link.name} ${link.kind ?? ""} ${link.mac} mtu ${link.mtu} ${link.up ? "up" : "down"}${master}`,
      );
    }
    console.log(`demo: tap ${tap.name} open as fd ${tap.fd}, ready for -netdev tap,fd=N`);
    fs.closeSync(tap.fd);
    return 0;
  } finally {
    pod.close();
    node.close();
    fs.closeSync(nodeNsFd);
    deleteNetns("demo-pod");
  }
}
