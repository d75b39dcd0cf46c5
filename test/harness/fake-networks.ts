// A stand-in for the tapmanager in tests of the CRI layer: pod networks are made up
// (10.88.0.x), taps are /dev/null fds, failures are injected on demand.
import fs from "node:fs";
import type {
  NetworkReadiness,
  OpenedTap,
  PodNetwork,
  PodNetworkRequest,
  PodNetworks,
} from "../../src/runtime/types";

export class FakePodNetworks implements PodNetworks {
  readonly networks = new Map<string, PodNetwork>();
  readonly calls: string[] = [];
  readiness: NetworkReadiness = { ready: true };
  /** The next setUp fails with this, after "building" the network (teardown must undo it). */
  failNextSetUp: Error | undefined;
  failNextTearDown: Error | undefined;
  private next = 2;

  async setUp(req: PodNetworkRequest): Promise<PodNetwork> {
    const id = req.pod.sandboxId;
    this.calls.push(`setUp ${id}`);
    const network: PodNetwork = {
      pod: req.pod,
      netnsPath: `/run/netns/fake-${id.slice(0, 8)}`,
      hostname: req.hostname ?? req.pod.name,
      interfaces: [
        {
          ifname: "eth0",
          network: "fake",
          bridge: "br-eth0",
          tap: "tap-eth0",
          guestMac: "0a:58:0a:58:00:02",
          mtu: 1500,
          addresses: [
            { family: 4, address: `10.88.0.${this.next}`, prefixLength: 24 },
            { family: 6, address: `fd00::${this.next.toString(16)}`, prefixLength: 64 },
          ],
          gateway: "10.88.0.1",
          routes: [{ dst: "0.0.0.0", prefixLength: 0, gateway: "10.88.0.1" }],
          dns: { nameservers: [], search: [] },
        },
      ],
    };
    this.next += 1;
    this.networks.set(id, network);
    const failure = this.failNextSetUp;
    if (failure) {
      this.failNextSetUp = undefined;
      throw failure;
    }
    return network;
  }

  async tearDown(sandboxId: string): Promise<void> {
    this.calls.push(`tearDown ${sandboxId}`);
    const failure = this.failNextTearDown;
    if (failure) {
      this.failNextTearDown = undefined;
      throw failure;
    }
    this.networks.delete(sandboxId);
  }

  get(sandboxId: string): PodNetwork | undefined {
    return this.networks.get(sandboxId);
  }

  openTaps(sandboxId: string): OpenedTap[] {
    const network = this.networks.get(sandboxId);
    if (!network) throw new Error(`openTaps ${sandboxId}: no pod network`);
    return network.interfaces.map((i) => ({
      ifname: i.ifname,
      tap: i.tap,
      fd: fs.openSync("/dev/null", "r"),
      guestMac: i.guestMac,
      mtu: i.mtu,
    }));
  }

  async recover(): Promise<void> {
    this.calls.push("recover");
  }

  networkStatus(): NetworkReadiness {
    return this.readiness;
  }
}
