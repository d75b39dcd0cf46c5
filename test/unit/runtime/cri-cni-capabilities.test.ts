// The bandwidth annotations as kubelet's runtimes turn them into CNI's runtimeConfig:
// Kubernetes quantities in bits per second, a burst of math.MaxUint32 bits, bounds of 1k
// to 1P, and a clear INVALID_ARGUMENT naming the annotation otherwise.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { bandwidthFromAnnotations } from "../../../src/runtime/cni-capabilities";
import { CriError } from "../../../src/runtime/errors";
import { parseQuantity } from "../../../src/util/quantity";

describe("bandwidth annotations", () => {
  test("quantities: decimal and binary suffixes, exponents, fractions rounded up", () => {
    assert.equal(parseQuantity("10M"), 10_000_000);
    assert.equal(parseQuantity("1Mi"), 1_048_576);
    assert.equal(parseQuantity("2.5k"), 2500);
    assert.equal(parseQuantity("1e6"), 1_000_000);
    assert.equal(parseQuantity("1500m"), 2);
    assert.equal(parseQuantity("100"), 100);
    assert.equal(parseQuantity("10 M"), undefined);
    assert.equal(parseQuantity("fast"), undefined);
    assert.equal(parseQuantity("10Mb"), undefined);
  });

  test("ingress and egress become rates in bits/s with containerd's burst", () => {
    assert.deepEqual(
      bandwidthFromAnnotations(
        { "kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "1G" },
        "default/p",
      ),
      {
        ingressRate: 10_000_000,
        ingressBurst: 4_294_967_295,
        egressRate: 1_000_000_000,
        egressBurst: 4_294_967_295,
      },
    );
    assert.deepEqual(
      bandwidthFromAnnotations({ "kubernetes.io/egress-bandwidth": "5M" }, "default/p"),
      { egressRate: 5_000_000, egressBurst: 4_294_967_295 },
    );
    assert.equal(bandwidthFromAnnotations({ other: "1" }, "default/p"), undefined);
  });

  test("a value that is no quantity, or out of 1k..1P, is INVALID_ARGUMENT naming it", () => {
    for (const [value, why] of [
      ["fast", /not a quantity/],
      ["999", /out of range/],
      ["2P", /out of range/],
    ] as const) {
      assert.throws(
        () => bandwidthFromAnnotations({ "kubernetes.io/ingress-bandwidth": value }, "ns/p"),
        (e: unknown) =>
          e instanceof CriError &&
          e.code === "INVALID_ARGUMENT" &&
          e.message.includes(
            `RunPodSandbox ns/p: annotation kubernetes.io/ingress-bandwidth "${value}"`,
          ) &&
          why.test(e.message),
      );
    }
  });
});
