/**
 * The one error type that crosses module boundaries. Each subsystem uses its own stable code
 * prefix (`VM_`, `QMP_`, `NBD_`, `IMAGE_`, `HOST_`, ...); the API maps codes to HTTP statuses in
 * one table (src/core/error-codes.ts), so a code is a contract: never rename one.
 */
export class NubisError extends Error {
  override readonly name = 'NubisError';
  readonly code: string;
  /** Extra facts a client may act on (the offending value, the limit, a log tail). */
  readonly details?: Record<string, unknown>;

  constructor(code: string, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details;
  }
}

/** True when `error` is a NubisError, optionally with the given code. */
export function isNubisError(error: unknown, code?: string): error is NubisError {
  return error instanceof NubisError && (code === undefined || error.code === code);
}

/** The message of anything thrown, for logs and wrapped errors. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
