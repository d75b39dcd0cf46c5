// A CRI client on vmlet's socket, with a promise per call, typed from the contract:
// what kubelet or crictl would send. Used by tests, benches and the demo.
import * as grpc from "@grpc/grpc-js";
import type { ImageServiceDefinition } from "./generated/runtime/v1/ImageService";
import type { RuntimeServiceDefinition } from "./generated/runtime/v1/RuntimeService";
import { loadCri } from "./proto";

type UnaryCalls<D> = {
  [K in keyof D as string extends K ? never : K]: D[K] extends {
    requestSerialize: (value: infer Req) => Buffer;
    responseDeserialize: (bytes: Buffer) => infer Res;
  }
    ? (request: Req, options?: { deadlineMs?: number }) => Promise<Res>
    : never;
};

export type RuntimeCalls = Omit<UnaryCalls<RuntimeServiceDefinition>, "GetContainerEvents">;
export type ImageCalls = UnaryCalls<ImageServiceDefinition>;

export interface CriClient {
  runtime: RuntimeCalls;
  image: ImageCalls;
  close(): void;
}

type Callback = (error: grpc.ServiceError | null, response?: unknown) => void;
type RawUnary = (
  request: unknown,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: Callback,
) => unknown;

/** `options` are grpc-js channel options (e.g. `grpc.default_authority`, as other clients send). */
export function connectCri(socketPath: string, options: grpc.ClientOptions = {}): CriClient {
  const cri = loadCri();
  const address = `unix:${socketPath}`;
  const runtime = new cri.RuntimeService(address, grpc.credentials.createInsecure(), options);
  const image = new cri.ImageService(address, grpc.credentials.createInsecure(), options);
  return {
    runtime: promised(runtime, cri.RuntimeService.service) as unknown as RuntimeCalls,
    image: promised(image, cri.ImageService.service) as unknown as ImageCalls,
    close() {
      runtime.close();
      image.close();
    },
  };
}

function promised(client: grpc.Client, service: grpc.ServiceDefinition): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const methods = client as unknown as Record<string, RawUnary>;
  for (const [name, def] of Object.entries(service)) {
    if (def.responseStream) continue;
    out[name] = (request: unknown, options?: { deadlineMs?: number }) =>
      new Promise((resolve, reject) => {
        const deadline =
          options?.deadlineMs === undefined ? undefined : Date.now() + options.deadlineMs;
        methods[name].call(client, request, new grpc.Metadata(), { deadline }, (error, response) =>
          error ? reject(error) : resolve(response),
        );
      });
  }
  return out;
}
