// The node's containerd as the proxy reaches it: a CRI client on its socket whose errors
// come back as CriErrors with containerd's own code, and messages that say it was
// containerd (and at which socket) that answered, or did not.
import { status as grpcStatus, type ServiceError } from "@grpc/grpc-js";
import { type CriClient, connectCri, type ImageCalls, type RuntimeCalls } from "../cri/client";
import type { CallContext } from "../cri/server";
import { type CriCode, CriError, GRPC_CODES } from "../errors";

/** kubelet's default --runtime-request-timeout: a call containerd never answers ends. */
export const CONTAINERD_CALL_TIMEOUT_MS = 120_000;

const CODE_NAMES = new Map<number, CriCode>(
  Object.entries(GRPC_CODES).map(([name, code]) => [code, name as CriCode]),
);

type Calls = RuntimeCalls & ImageCalls;
export type Method = keyof Calls;
export type RequestOf<M extends Method> = Parameters<Calls[M]>[0];
export type ResponseOf<M extends Method> = Awaited<ReturnType<Calls[M]>>;

const IMAGE_METHODS = new Set<string>([
  "ListImages",
  "ImageStatus",
  "PullImage",
  "RemoveImage",
  "ImageFsInfo",
]);

export class Containerd {
  private readonly client: CriClient;

  constructor(readonly socket: string) {
    // A restarted containerd is reached again within a second, not after grpc-js's
    // default backoff of up to two minutes.
    this.client = connectCri(socket, {
      "grpc.initial_reconnect_backoff_ms": 100,
      "grpc.max_reconnect_backoff_ms": 1000,
    });
  }

  /**
   * One CRI call to containerd, within the caller's deadline, or else the default cap
   * (none for a pull, which takes as long as the registry does).
   */
  async call<M extends Method>(
    method: M,
    request: RequestOf<M>,
    context?: CallContext,
  ): Promise<ResponseOf<M>> {
    const cap = method === "PullImage" ? Number.POSITIVE_INFINITY : CONTAINERD_CALL_TIMEOUT_MS;
    const deadline = context?.deadline ?? Number.POSITIVE_INFINITY;
    const deadlineMs = Number.isFinite(deadline) ? deadline - Date.now() : cap;
    const service = (IMAGE_METHODS.has(method) ? this.client.image : this.client.runtime) as Record<
      string,
      (request: unknown, options?: { deadlineMs?: number }) => Promise<unknown>
    >;
    try {
      return (await service[method](
        request,
        Number.isFinite(deadlineMs) ? { deadlineMs: Math.max(1, deadlineMs) } : {},
      )) as ResponseOf<M>;
    } catch (error) {
      throw this.translate(method, error);
    }
  }

  /** containerd's error as the CRI client sees it, with containerd named. */
  translate(method: string, error: unknown): CriError {
    const e = error as Partial<ServiceError>;
    if (typeof e.code !== "number") {
      return new CriError("INTERNAL", `${method}: containerd at ${this.socket}: ${String(error)}`, {
        cause: error,
      });
    }
    if (e.code === grpcStatus.UNAVAILABLE) {
      return new CriError(
        "UNAVAILABLE",
        `${method}: containerd at ${this.socket} cannot be reached: ${e.details ?? ""}`,
        { cause: error },
      );
    }
    const code = CODE_NAMES.get(e.code);
    const detail = code ? (e.details ?? "") : `${grpcStatus[e.code]}: ${e.details ?? ""}`;
    return new CriError(code ?? "UNKNOWN", `${method}: containerd: ${detail}`, { cause: error });
  }

  close(): void {
    this.client.close();
  }
}

/** The code of an error from `Containerd.call`, or of anything else. */
export function codeOf(error: unknown): CriCode | undefined {
  return error instanceof CriError ? error.code : undefined;
}
