// The metav1.Status documents the remotecommand error stream carries (v4 and later), in
// the shapes client-go's errorDecoderV4 reads: Success, NonZeroExitCode with an ExitCode
// cause, or any other failure (InternalError).

export interface StatusCause {
  type?: string;
  message: string;
}

export interface MetaStatus {
  metadata: Record<string, never>;
  status: "Success" | "Failure";
  message?: string;
  reason?: string;
  details?: { causes: StatusCause[] };
  code?: number;
}

export const NON_ZERO_EXIT_CODE_REASON = "NonZeroExitCode";
export const EXIT_CODE_CAUSE_TYPE = "ExitCode";

export function successStatus(): MetaStatus {
  return { metadata: {}, status: "Success" };
}

export function exitCodeStatus(exitCode: number): MetaStatus {
  return {
    metadata: {},
    status: "Failure",
    message: `command terminated with non-zero exit code: exit status ${exitCode}`,
    reason: NON_ZERO_EXIT_CODE_REASON,
    details: { causes: [{ type: EXIT_CODE_CAUSE_TYPE, message: String(exitCode) }] },
  };
}

export function internalErrorStatus(error: Error): MetaStatus {
  return {
    metadata: {},
    status: "Failure",
    message: `Internal error occurred: ${error.message}`,
    reason: "InternalError",
    details: { causes: [{ message: error.message }] },
    code: 500,
  };
}
