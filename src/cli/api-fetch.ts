/**
 * How the CLI's HTTP requests reach the API, also over HTTPS with a CA of its own (the Nubis CA
 * of `nubis up --tls-self-signed`, or a company CA given with `--ca`/`NUBIS_CA`).
 *
 * Node 20's global fetch takes no CA per request, and the undici inside Node cannot be imported.
 * So the CLI uses the `undici` package (declared in package.json) for every request: its `fetch`
 * with its own `Agent({ connect: { ca } })` as the dispatcher. The fetch and the Agent come from
 * one package, so their versions always agree (an Agent of one undici handed to another's fetch
 * is not guaranteed to work). Neither NODE_EXTRA_CA_CERTS (read once at process start, trusted by
 * every connection of the process) nor changing Node's root certificates is involved: the CA is
 * trusted for the API's connections only.
 */
import { readFileSync } from 'node:fs';
import { Agent, fetch as undiciFetch } from 'undici';
import { NubisError, messageOf } from '../core/errors.ts';

/** The fetch the API client calls: the global fetch's shape. */
export type ApiFetch = (url: string, init?: RequestInit) => Promise<Response>;

const TRUST_HINT = 'give its CA with --ca FILE or NUBIS_CA (nubis up --tls-self-signed keeps it in <data>/tls/ca.pem)';
/** What to do about a TLS error (Node's `tls` codes) of the server's certificate. */
const TLS_HINTS: Record<string, string> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: TRUST_HINT,
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: TRUST_HINT,
  SELF_SIGNED_CERT_IN_CHAIN: TRUST_HINT,
  DEPTH_ZERO_SELF_SIGNED_CERT: TRUST_HINT,
  CERT_UNTRUSTED: TRUST_HINT,
  ERR_TLS_CERT_ALTNAME_INVALID: 'use a name the certificate carries, or start Nubis with --tls-name for this one',
  CERT_HAS_EXPIRED: 'the server needs a new certificate',
};

/**
 * A fetch for the API. With `caPath`, the server's certificate must chain to that CA, and only to
 * it: the file replaces the system's CAs for these connections, so no public CA can stand in for
 * a private control plane. Without it, the system's CAs (and NODE_EXTRA_CA_CERTS) apply as for
 * any fetch. An unreadable CA file is `TLS_FILE_UNREADABLE`.
 */
export function apiFetch(caPath?: string): ApiFetch {
  const dispatcher = caPath ? new Agent({ connect: { ca: readCaFile(caPath) } }) : undefined;
  // undici's Request/Response types are its own declarations of the same WHATWG classes.
  return ((url: string, init?: RequestInit) => undiciFetch(url, { ...(init as object), dispatcher })) as unknown as ApiFetch;
}

/** The CA certificate(s) at `caPath`, for fetch and for the console's WebSocket. */
export function readCaFile(caPath: string): Buffer {
  try {
    return readFileSync(caPath);
  } catch (error) {
    throw new NubisError('TLS_FILE_UNREADABLE', `Cannot read the CA file ${caPath}: ${(error as NodeJS.ErrnoException).code ?? messageOf(error)}`, {
      cause: error,
      details: { path: caPath },
    });
  }
}

/**
 * The error for a request that never got an answer. fetch says only "fetch failed"; the reason
 * is in its `cause`. A certificate the CLI refuses gets a sentence that says what to do.
 */
export function unreachableError(url: string, error: unknown): NubisError {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  const hint = cause?.code ? TLS_HINTS[cause.code] : undefined;
  if (hint)
    return new NubisError('API_UNREACHABLE', `The certificate of the Nubis API at ${url} is refused (${cause?.message}); ${hint}`, {
      cause: error,
      details: { tlsError: cause?.code },
    });
  return new NubisError('API_UNREACHABLE', `Cannot reach the Nubis API at ${url} (${cause?.message ?? messageOf(error)}); is it running? (npx nubis status)`, {
    cause: error,
  });
}
