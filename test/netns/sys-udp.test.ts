import assert from "node:assert/strict";
import type dgram from "node:dgram";
import { describe, it } from "node:test";
import { openBoundUdpSocket } from "../../src/sys/udp";
import { ipIn, makeNetns, requirePrivateNamespace, sendUdp, vethPair } from "../harness/fixtures";

requirePrivateNamespace();

function nextMessage(socket: dgram.Socket, ms: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(undefined), ms);
    socket.once("message", (msg) => {
      clearTimeout(timer);
      resolve(msg.toString());
    });
  });
}

describe("openBoundUdpSocket", () => {
  it("receives broadcasts on its device only, inside the pod netns", async () => {
    const pod = makeNetns("pod");
    const peerA = makeNetns("pa");
    const peerB = makeNetns("pb");
    try {
      const a = vethPair(pod.name, peerA.name);
      const b = vethPair(pod.name, peerB.name);
      ipIn(peerA.name, "addr", "add", "192.0.2.2/24", "dev", a.b);
      ipIn(peerB.name, "addr", "add", "198.51.100.2/24", "dev", b.b);
      // Limited broadcasts leave by the default route, as a DHCP client's would.
      ipIn(peerA.name, "route", "add", "default", "dev", a.b);
      ipIn(peerB.name, "route", "add", "default", "dev", b.b);
      const socket = await openBoundUdpSocket(pod.path, { device: a.a, port: 6767 });
      try {
        const fromB = nextMessage(socket, 1000);
        sendUdp(peerB.name, { address: "255.255.255.255", port: 6767 }, "via-b");
        assert.equal(await fromB, undefined, "a broadcast on another device is not seen");
        const fromA = nextMessage(socket, 3000);
        sendUdp(peerA.name, { address: "255.255.255.255", port: 6767 }, "via-a");
        assert.equal(await fromA, "via-a");
      } finally {
        socket.close();
      }
    } finally {
      pod.remove();
      peerA.remove();
      peerB.remove();
    }
  });

  it("names the device when it does not exist", async () => {
    const pod = makeNetns("pod");
    try {
      await assert.rejects(
        openBoundUdpSocket(pod.path, { device: "nope0", port: 6767 }),
        /SO_BINDTODEVICE for udp 0.0.0.0:6767 on nope0 in \/run\/netns\/pod\w*: ENODEV/,
      );
    } finally {
      pod.remove();
    }
  });
});
