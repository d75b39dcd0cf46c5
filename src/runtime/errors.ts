// Errors the CRI layer answers with: each carries the gRPC status code kubelet sees and a
// message that names the call, the object and what went wrong.
import { status } from "@grpc/grpc-js";

export type CriCode =
  | "INVALID_ARGUMENT"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "FAILED_PRECONDITION"
  | "UNIMPLEMENTED"
  | "UNAVAILABLE"
  | "DEADLINE_EXCEEDED"
  | "CANCELLED"
  | "RESOURCE_EXHAUSTED"
  | "UNKNOWN"
  | "INTERNAL";

export const GRPC_CODES: Record<CriCode, status> = {
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  NOT_FOUND: status.NOT_FOUND,
  ALREADY_EXISTS: status.ALREADY_EXISTS,
  FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  UNIMPLEMENTED: status.UNIMPLEMENTED,
  UNAVAILABLE: status.UNAVAILABLE,
  DEADLINE_EXCEEDED: status.DEADLINE_EXCEEDED,
  CANCELLED: status.CANCELLED,
  RESOURCE_EXHAUSTED: status.RESOURCE_EXHAUSTED,
  UNKNOWN: status.UNKNOWN,
  INTERNAL: status.INTERNAL,
};

export class CriError extends Error {
  readonly code: CriCode;

  constructor(code: CriCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CriError";
    this.code = code;
  }
}

export function invalidArgument(message: string): CriError {
  return new CriError("INVALID_ARGUMENT", message);
}

export function notFound(message: string): CriError {
  return new CriError("NOT_FOUND", message);
}

export function failedPrecondition(message: string): CriError {
  return new CriError("FAILED_PRECONDITION", message);
}
