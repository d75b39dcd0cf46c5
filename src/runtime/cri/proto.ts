// The CRI contract loaded at run time from proto/runtime/v1/api.proto, with the same
// options the committed types were generated with (proto/gen.sh).
import path from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import type {
  ImageServiceClient,
  ImageServiceDefinition,
} from "./generated/runtime/v1/ImageService";
import type {
  RuntimeServiceClient,
  RuntimeServiceDefinition,
} from "./generated/runtime/v1/RuntimeService";

// dist/src/runtime/cri and src/runtime/cri both sit four levels below the repository.
export const CRI_PROTO = path.resolve(__dirname, "../../../..", "proto/runtime/v1/api.proto");

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

type ClientConstructor<Client, Definition> = (new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ClientOptions,
) => Client) & { service: Definition };

export interface CriPackage {
  RuntimeService: ClientConstructor<RuntimeServiceClient, RuntimeServiceDefinition>;
  ImageService: ClientConstructor<ImageServiceClient, ImageServiceDefinition>;
}

let loaded: CriPackage | undefined;

export function loadCri(): CriPackage {
  if (!loaded) {
    const definition = protoLoader.loadSync(CRI_PROTO, LOADER_OPTIONS);
    const root = grpc.loadPackageDefinition(definition) as unknown as {
      runtime: { v1: CriPackage };
    };
    loaded = root.runtime.v1;
  }
  return loaded;
}
