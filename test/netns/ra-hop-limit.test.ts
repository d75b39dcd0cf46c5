// RFC 4861 section 6.1.1: a router silently discards a router solicitation whose IPv6 hop
// limit is not 255 (it may have been forwarded from another link). scapy sends crafted
// RSs from a guest netns bridged to the pod bridge; vmlet's RA responder answers the one
// with 255 and drops, and counts, the others.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { describe, it } from "node:test";
import { Ipv6Server } from "../../src/dhcp6/server";
import { waitFor } from "../harness/client-process";
import { bridgedGuest, ipIn, requirePrivateNamespace } from "../harness/fixtures";
import { execFileAsync, linkLocalOf } from "../harness/ipv6-guest";

requirePrivateNamespace();

const SCRIPT = path.join(__dirname, "../../../test/harness/rs-scapy.py");
const GUEST_MAC = "52:54:00:aa:bb:07";
const BRIDGE = "br0";

interface RsOutcome {
  answered: boolean;
  raSource: string | null;
}

/** scapy's RS with `hopLimit` from the guest; whether an RA came back to it within 1.5 s. */
async function solicit(guestNetns: string, source: string, hopLimit: number): Promise<RsOutcome> {
  // Async: the server answers on this process's event loop.
  const { stdout } = await execFileAsync("ip", [
    "netns",
    "exec",
    guestNetns,
    "/usr/bin/python3",
    SCRIPT,
    "eth0",
    GUEST_MAC,
    source,
    String(hopLimit),
    "1.5",
  ]);
  return JSON.parse(stdout) as RsOutcome;
}

describe("the RA responder checks a router solicitation's hop limit", () => {
  it("answers an RS with hop limit 255 and drops and counts one with 64 or 254", async () => {
    const { host, pod, guest } = bridgedGuest(
      { host: "hh", pod: "hp", guest: "hg" },
      { bridge: BRIDGE, guestPort: "vtap0", guestMac: GUEST_MAC },
    );
    const server = await Ipv6Server.start({
      nsPath: pod.path,
      device: BRIDGE,
      leases: [
        { mac: GUEST_MAC, address: "fd00:10:244:1::5", dns: [], search: [], leaseSeconds: 60 },
      ],
      dns: [],
      search: [],
      onLink: [],
    });
    try {
      // Only scapy solicits: the guest kernel's own RSs would be answered too.
      execFileSync("ip", [
        "netns",
        "exec",
        guest.name,
        "sysctl",
        "-qw",
        "net.ipv6.conf.eth0.router_solicitations=0",
      ]);
      ipIn(guest.name, "link", "set", "eth0", "up");
      const source = await waitFor("the guest's link-local", 5000, () =>
        linkLocalOf(guest.name, "eth0"),
      );
      const before = server.stats().router;

      const forwarded = await solicit(guest.name, source, 64);
      const oneHop = await solicit(guest.name, source, 254);
      assert.equal(forwarded.answered, false, "no RA for an RS with hop limit 64");
      assert.equal(oneHop.answered, false, "no RA for an RS with hop limit 254");
      assert.equal(server.stats().router.dropped["hop-limit"], 2);

      const local = await solicit(guest.name, source, 255);
      assert.equal(
        local.answered,
        true,
        `an RA for an RS with hop limit 255 (router: ${JSON.stringify(server.stats().router)})`,
      );
      assert.equal(local.raSource, server.linkLocal);
      const after = server.stats().router;
      // At least scapy's three: a kernel on the bridge (the host side's) may solicit too.
      assert.ok(
        after.solicitations >= before.solicitations + 3,
        `${after.solicitations - before.solicitations} solicitations counted, scapy sent 3`,
      );
      assert.deepEqual(after.dropped, { "hop-limit": 2 });
    } finally {
      await server.close();
      guest.remove();
      pod.remove();
      host.remove();
    }
  });
});
