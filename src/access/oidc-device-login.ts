/**
 * The CLI's side of an OpenID Connect login: the OAuth 2.0 Device Authorization Grant (RFC 8628),
 * which suits a terminal that may have no browser (an SSH session on a jump host). The CLI asks
 * the provider for a user code, shows it with the verification URL, and polls the token endpoint
 * while the user approves in any browser; the ID token it receives is what the control plane
 * verifies (oidc.ts). Nubis's CLI is a public client (RFC 6749 §2.1): it sends its client id and
 * no secret, because a secret shipped inside a CLI is no secret.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { NubisError, messageOf } from '../core/errors.ts';
import { discoverOidcProvider } from './oidc.ts';

/** What the user must do, as the provider's device authorization response (RFC 8628 §3.2) says it. */
export interface DeviceLoginPrompt {
  /** The page where the user types the code. */
  verificationUri: string;
  /** The same page with the code filled in, for a QR code or a click, when the provider offers it. */
  verificationUriComplete?: string;
  /** The code to type, as the provider formats it. */
  userCode: string;
  /** How long the code stays valid. */
  expiresInSeconds: number;
}

/** The options of `deviceLogin`. */
export interface DeviceLoginOptions {
  /** The provider's issuer identifier; its endpoints are discovered from it. */
  issuer: string;
  /** Nubis's public client id at the provider, with the device code grant enabled. */
  clientId: string;
  /**
   * Scopes to ask for; default `openid profile groups`: `openid` makes the provider issue an ID
   * token, `profile` brings `preferred_username`, `groups` the groups claim. A provider that has
   * no `groups` scope (some put groups in `profile`, or always) may refuse an unknown scope with
   * invalid_scope: pass `openid profile` there.
   */
  scope?: string;
  /** Called once with the code to show the user; polling starts right after it returns. */
  onPrompt(prompt: DeviceLoginPrompt): void;
  /** Aborts the login; `deviceLogin` then rejects with the signal's reason. */
  signal?: AbortSignal;
}

const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
/** RFC 8628 §3.2: "If no value is provided, clients MUST use 5 as the default." */
const DEFAULT_INTERVAL_SECONDS = 5;
/** RFC 8628 §3.5: on slow_down "the interval MUST be increased by 5 seconds for this and all subsequent requests". */
const SLOW_DOWN_SECONDS = 5;
const HTTP_TIMEOUT_MS = 10_000;

/** A form POST to the provider (RFC 8628 §3.1 and §3.4 use application/x-www-form-urlencoded) and its JSON answer. */
async function postForm(
  url: string,
  form: Record<string, string>,
  signal: AbortSignal | undefined,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const timeout = AbortSignal.timeout(HTTP_TIMEOUT_MS);
  try {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body: new URLSearchParams(form),
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    });
    const text = await response.text();
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      throw new Error(`it answered HTTP ${response.status} with a body that is not JSON`);
    }
    if (typeof body !== 'object' || body === null) throw new Error(`it answered HTTP ${response.status} with JSON that is not an object`);
    return { status: response.status, body: body as Record<string, unknown> };
  } catch (cause) {
    if (signal?.aborted) throw signal.reason;
    const why = timeout.aborted ? `it did not answer within ${HTTP_TIMEOUT_MS / 1000} s` : messageOf(cause);
    throw new NubisError('AUTH_OIDC_UNAVAILABLE', `The OpenID provider's endpoint ${url} failed: ${why}`, { cause });
  }
}

/** The provider's `error` and `error_description` (RFC 6749 §5.2) as one short phrase. */
function describeError(body: Record<string, unknown>): string {
  const code = typeof body.error === 'string' ? body.error : 'an unnamed error';
  const description = typeof body.error_description === 'string' ? `: ${body.error_description.slice(0, 200)}` : '';
  return `${code}${description}`;
}

/**
 * Logs in with the OAuth 2.0 Device Authorization Grant (RFC 8628) and returns the ID token.
 * Discovers the issuer's `device_authorization_endpoint` and `token_endpoint`, requests a device
 * code (§3.1), hands the user code to `onPrompt`, then polls the token endpoint (§3.4) at the
 * interval the provider asked for, adding 5 s on each slow_down (§3.5), until the user approves,
 * denies (AUTH_OIDC_DEVICE_DENIED) or the code expires (AUTH_OIDC_DEVICE_EXPIRED). A provider
 * without the grant is AUTH_OIDC_DEVICE_UNSUPPORTED, any other refusal AUTH_OIDC_DEVICE_FAILED with
 * the provider's words, a provider that cannot be reached AUTH_OIDC_UNAVAILABLE.
 */
export async function deviceLogin(options: DeviceLoginOptions): Promise<{ idToken: string }> {
  const { issuer, clientId, scope = 'openid profile groups', signal } = options;
  signal?.throwIfAborted();
  const metadata = await discoverOidcProvider(issuer, signal);
  const deviceEndpoint = metadata.device_authorization_endpoint;
  const tokenEndpoint = metadata.token_endpoint;
  if (!deviceEndpoint || !tokenEndpoint)
    throw new NubisError(
      'AUTH_OIDC_DEVICE_UNSUPPORTED',
      `The OpenID provider ${issuer} offers no device authorization grant (RFC 8628): its discovery document has no device_authorization_endpoint`,
    );

  // RFC 8628 §3.1: a public client authenticates with its client_id alone.
  const authorization = await postForm(deviceEndpoint, { client_id: clientId, scope }, signal);
  if (authorization.status !== 200)
    throw new NubisError('AUTH_OIDC_DEVICE_FAILED', `The OpenID provider refused the device login: ${describeError(authorization.body)}`);
  const { device_code: deviceCode, user_code: userCode, verification_uri: verificationUri, verification_uri_complete: complete } = authorization.body;
  const expiresIn = authorization.body.expires_in;
  if (
    typeof deviceCode !== 'string' ||
    typeof userCode !== 'string' ||
    typeof verificationUri !== 'string' ||
    typeof expiresIn !== 'number' ||
    !(expiresIn > 0)
  )
    throw new NubisError(
      'AUTH_OIDC_DEVICE_FAILED',
      `The OpenID provider's device authorization response at ${deviceEndpoint} lacks device_code, user_code, verification_uri or expires_in`,
    );
  const interval = authorization.body.interval;
  let intervalSeconds = typeof interval === 'number' && interval > 0 ? interval : DEFAULT_INTERVAL_SECONDS;
  const deadline = Date.now() + expiresIn * 1000;

  options.onPrompt({
    verificationUri,
    ...(typeof complete === 'string' ? { verificationUriComplete: complete } : {}),
    userCode,
    expiresInSeconds: expiresIn,
  });

  for (;;) {
    // The provider answers expired_token once the code is past expires_in; this is the backstop
    // for one that keeps saying authorization_pending.
    if (Date.now() >= deadline)
      throw new NubisError('AUTH_OIDC_DEVICE_EXPIRED', `The device code expired before the login was approved (it was valid for ${expiresIn} s)`);
    // §3.5: the client waits the interval before each request, the first one included.
    try {
      await sleep(intervalSeconds * 1000, undefined, { signal });
    } catch (error) {
      signal?.throwIfAborted(); // the signal's own reason rather than the timer's AbortError
      throw error;
    }
    const answer = await postForm(tokenEndpoint, { grant_type: DEVICE_CODE_GRANT, device_code: deviceCode, client_id: clientId }, signal);
    if (answer.status === 200) {
      if (typeof answer.body.id_token !== 'string')
        throw new NubisError('AUTH_OIDC_DEVICE_FAILED', `The OpenID provider issued no ID token: the scope ${JSON.stringify(scope)} must include openid`);
      return { idToken: answer.body.id_token };
    }
    // RFC 8628 §3.5: the error codes of the device access token response.
    switch (answer.body.error) {
      case 'authorization_pending':
        continue;
      case 'slow_down':
        intervalSeconds += SLOW_DOWN_SECONDS;
        continue;
      case 'access_denied':
        throw new NubisError('AUTH_OIDC_DEVICE_DENIED', 'The login was denied at the OpenID provider');
      case 'expired_token':
        throw new NubisError('AUTH_OIDC_DEVICE_EXPIRED', `The device code expired before the login was approved (it was valid for ${expiresIn} s)`);
      default:
        throw new NubisError('AUTH_OIDC_DEVICE_FAILED', `The OpenID provider refused the device login: ${describeError(answer.body)}`);
    }
  }
}
