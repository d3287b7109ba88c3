/**
 * The control plane as an OpenID Connect relying party that takes ID tokens as credentials, the
 * model of Kubernetes' `--oidc-issuer-url`: the CLI obtains an ID token from the organisation's
 * provider (oidc-device-login.ts), sends it, and Nubis verifies it here against the provider's
 * published keys, then maps its claims to a Nubis user name and groups. Nubis never sees the
 * user's password and needs no client secret.
 *
 * Validation follows OpenID Connect Core 1.0 §3.1.3.7 (ID Token Validation): the issuer must be
 * the configured one, the audience must contain our client id (with `azp` when there are several
 * audiences), the signature must verify with a key of the provider's JWKS, and `exp` must be in
 * the future. Discovery follows OpenID Connect Discovery 1.0 §4.
 */
import { createRemoteJWKSet, decodeProtectedHeader, errors, type JWTPayload, type JWTVerifyGetKey, jwtVerify } from 'jose';
import { NubisError, messageOf } from '../core/errors.ts';

/** Where Nubis trusts ID tokens from, and which claims name the user and the groups. */
export interface OidcConfig {
  /** The provider's issuer identifier, exactly as its tokens' `iss` claim spells it. */
  issuer: string;
  /** Nubis's client id at the provider: ID tokens must carry it in `aud`. */
  clientId: string;
  /** The claim holding the user's groups; default `groups`. */
  groupsClaim?: string;
  /** The claim holding the user name; default `preferred_username`, falling back to `sub` when absent. */
  usernameClaim?: string;
}

/** What a verified ID token says about its bearer. */
export interface OidcIdentity {
  /** The provider's stable identifier of the user (`sub`); with the issuer, the key to bind a Nubis user to. */
  subject: string;
  /** The Nubis user name, lower case, matching USERNAME. */
  username: string;
  /** The provider's groups of the user, strings of at most 128 characters, in token order without repeats. */
  groups: string[];
  /** When the ID token expires: a session built on it should not outlive it. */
  expiresAt: Date;
}

/** The fields of an OpenID provider's metadata that Nubis uses (Discovery 1.0 §3). */
export interface OidcProviderMetadata {
  issuer: string;
  jwks_uri: string;
  token_endpoint?: string;
  /** RFC 8628 §4: present when the provider offers the device authorization grant. */
  device_authorization_endpoint?: string;
}

/** A Nubis user name: it becomes a user of the store, so the same rule as local users. */
const USERNAME = /^[a-z][a-z0-9_.-]{0,62}$/;
/** Asymmetric algorithms only: an HMAC-signed ID token would be signed with the client secret, and Nubis's client has none. */
const ALGORITHMS = ['RS256', 'ES256', 'EdDSA'];
/** Tolerated clock skew between Nubis and the provider when checking `exp`, `nbf` and `iat`. */
const CLOCK_TOLERANCE_SECONDS = 30;
const MAX_GROUPS = 256;
const MAX_GROUP_LENGTH = 128;
/** Longer than any ID token seen in practice; a bigger one is refused before any parsing. */
const MAX_TOKEN_LENGTH = 16_384;
const HTTP_TIMEOUT_MS = 10_000;

/** Checks the issuer is a URL Nubis may trust: https, or http on loopback for tests and labs. */
function checkIssuer(issuer: string): void {
  let url: URL;
  try {
    url = new URL(issuer);
  } catch (cause) {
    throw new NubisError('AUTH_OIDC_CONFIG_INVALID', `The OIDC issuer ${JSON.stringify(issuer)} is not a URL`, { cause });
  }
  // Discovery 1.0 §3 and Core 1.0 §2: the issuer is an https URL without query or fragment.
  // Plain http is allowed on loopback only, where nothing on the network can change the keys.
  const loopback = ['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname);
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && loopback))
    throw new NubisError('AUTH_OIDC_CONFIG_INVALID', `The OIDC issuer ${issuer} must use https (plain http only on 127.0.0.1, localhost or [::1])`);
  if (url.search || url.hash) throw new NubisError('AUTH_OIDC_CONFIG_INVALID', `The OIDC issuer ${issuer} must have no query or fragment`);
}

/**
 * Fetches and checks the provider's metadata from `${issuer}/.well-known/openid-configuration`
 * (OpenID Connect Discovery 1.0 §4; a trailing `/` of the issuer is dropped before appending, as
 * §4 says). The document must name the same issuer, byte for byte (§4.3), or an attacker who can
 * serve a document could substitute his own keys; it must name a `jwks_uri`. A provider that
 * cannot be reached or answers nonsense is AUTH_OIDC_UNAVAILABLE; an abort by `signal` rejects
 * with the signal's reason. Shared by the verifier and the device login.
 */
export async function discoverOidcProvider(issuer: string, signal?: AbortSignal): Promise<OidcProviderMetadata> {
  checkIssuer(issuer);
  const url = `${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
  const timeout = AbortSignal.timeout(HTTP_TIMEOUT_MS);
  let document: unknown;
  try {
    const response = await fetch(url, { headers: { accept: 'application/json' }, signal: signal ? AbortSignal.any([signal, timeout]) : timeout });
    if (!response.ok) throw new Error(`it answered HTTP ${response.status}`);
    document = await response.json();
  } catch (cause) {
    if (signal?.aborted) throw signal.reason;
    const why = timeout.aborted ? `it did not answer within ${HTTP_TIMEOUT_MS / 1000} s` : messageOf(cause);
    throw new NubisError('AUTH_OIDC_UNAVAILABLE', `The OpenID provider's discovery document ${url} could not be read: ${why}`, { cause });
  }
  const metadata = document as Partial<Record<keyof OidcProviderMetadata, unknown>> | null;
  if (typeof metadata !== 'object' || metadata === null || typeof metadata.jwks_uri !== 'string')
    throw new NubisError('AUTH_OIDC_UNAVAILABLE', `The OpenID provider's discovery document ${url} has no jwks_uri`);
  if (metadata.issuer !== issuer)
    throw new NubisError('AUTH_OIDC_UNAVAILABLE', `The discovery document ${url} names issuer ${JSON.stringify(metadata.issuer)}, not ${issuer}`);
  for (const field of ['token_endpoint', 'device_authorization_endpoint'] as const)
    if (metadata[field] !== undefined && typeof metadata[field] !== 'string')
      throw new NubisError('AUTH_OIDC_UNAVAILABLE', `The discovery document ${url} has a ${field} that is not a string`);
  return metadata as OidcProviderMetadata;
}

/** A claim value for a message: short, and JSON so that control characters cannot forge log lines. */
function shown(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/**
 * Verifies ID tokens of one OpenID provider for one client id and turns them into a Nubis
 * identity. The provider's metadata is discovered once, on first use, and kept; its keys are
 * fetched with jose's remote JWKS, which re-reads the set when a token names a key it does not
 * know (at most every 30 s), so a provider's key rotation needs no restart. Every refusal is
 * AUTH_OIDC_INVALID with a sentence naming what was wrong (expired, wrong audience, wrong issuer,
 * bad signature, unknown key, bad user name) and never the token itself; a provider that cannot
 * be reached is AUTH_OIDC_UNAVAILABLE.
 */
export class OidcVerifier {
  readonly #config: Readonly<Required<OidcConfig>>;
  #keys?: Promise<JWTVerifyGetKey>;

  constructor(config: OidcConfig) {
    checkIssuer(config.issuer);
    if (typeof config.clientId !== 'string' || config.clientId === '') throw new NubisError('AUTH_OIDC_CONFIG_INVALID', 'The OIDC client id is empty');
    this.#config = Object.freeze({
      issuer: config.issuer,
      clientId: config.clientId,
      groupsClaim: config.groupsClaim ?? 'groups',
      usernameClaim: config.usernameClaim ?? 'preferred_username',
    });
  }

  /** The issuer whose ID tokens this verifier accepts. */
  get issuer(): string {
    return this.#config.issuer;
  }

  /**
   * Verifies `idToken` (OpenID Connect Core 1.0 §3.1.3.7) and returns who it names: the subject,
   * the Nubis user name (the username claim lower-cased, which must match
   * /^[a-z][a-z0-9_.-]{0,62}$/), the groups and the expiry. Only RS256, ES256 and EdDSA
   * signatures are accepted, with 30 s of clock tolerance.
   */
  async verifyIdToken(idToken: string): Promise<OidcIdentity> {
    const { issuer, clientId } = this.#config;
    if (typeof idToken !== 'string' || idToken === '') throw new NubisError('AUTH_OIDC_INVALID', 'The ID token is empty');
    if (idToken.length > MAX_TOKEN_LENGTH) throw new NubisError('AUTH_OIDC_INVALID', `The ID token is longer than ${MAX_TOKEN_LENGTH} characters`);
    const keys = await this.#jwks();
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(idToken, keys, {
        issuer,
        audience: clientId,
        algorithms: ALGORITHMS,
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
        requiredClaims: ['sub', 'exp', 'iat'],
      }));
    } catch (error) {
      throw this.#refusal(error, idToken);
    }
    // Core §3.1.3.7 items 4 and 5: with several audiences, the token must have been issued to us.
    if (Array.isArray(payload.aud) && payload.aud.length > 1 && payload.azp !== clientId)
      throw new NubisError('AUTH_OIDC_INVALID', `The ID token has several audiences and its authorized party (azp) is ${shown(payload.azp)}, not ${clientId}`);
    if (typeof payload.sub !== 'string' || payload.sub === '') throw new NubisError('AUTH_OIDC_INVALID', 'The ID token has no subject (sub)');
    return {
      subject: payload.sub,
      username: this.#username(payload),
      groups: this.#groups(payload),
      expiresAt: new Date((payload.exp as number) * 1000),
    };
  }

  /** The provider's key set, from its discovered jwks_uri; a failed discovery is retried on the next call. */
  #jwks(): Promise<JWTVerifyGetKey> {
    this.#keys ??= discoverOidcProvider(this.#config.issuer).then((metadata) => {
      const remote = createRemoteJWKSet(new URL(metadata.jwks_uri), { timeoutDuration: HTTP_TIMEOUT_MS });
      // A key set that cannot be fetched is the provider's fault (503), not the token's (401).
      return async (header, token) => {
        try {
          return await remote(header, token);
        } catch (error) {
          if (error instanceof errors.JWKSNoMatchingKey || error instanceof errors.JWKSMultipleMatchingKeys || error instanceof errors.JOSEAlgNotAllowed)
            throw error;
          throw new NubisError('AUTH_OIDC_UNAVAILABLE', `The OpenID provider's key set ${metadata.jwks_uri} could not be read: ${messageOf(error)}`, {
            cause: error,
          });
        }
      };
    });
    this.#keys.catch(() => (this.#keys = undefined));
    return this.#keys;
  }

  /** Turns a jose failure into a sentence a user can act on, without the token in it. */
  #refusal(error: unknown, idToken: string): NubisError {
    if (error instanceof NubisError) return error;
    const claims = (error as { payload?: JWTPayload }).payload ?? {};
    const refuse = (message: string) => new NubisError('AUTH_OIDC_INVALID', message, { cause: error });
    if (error instanceof errors.JWTExpired)
      return refuse(typeof claims.exp === 'number' ? `The ID token expired at ${new Date(claims.exp * 1000).toISOString()}` : 'The ID token is expired');
    if (error instanceof errors.JWTClaimValidationFailed) {
      if (error.reason === 'missing') return refuse(`The ID token has no "${error.claim}" claim`);
      if (error.claim === 'iss') return refuse(`The ID token is from issuer ${shown(claims.iss)}, not ${this.#config.issuer}`);
      if (error.claim === 'aud') return refuse(`The ID token is for audience ${shown(claims.aud)}, not ${this.#config.clientId}`);
      if (error.claim === 'nbf') return refuse('The ID token is not valid yet (nbf is in the future)');
      if (error.claim === 'iat') return refuse('The ID token is issued in the future (iat)');
      return refuse(`The ID token has an invalid "${error.claim}" claim`);
    }
    if (error instanceof errors.JWSSignatureVerificationFailed) return refuse('The ID token has a bad signature');
    if (error instanceof errors.JWKSNoMatchingKey || error instanceof errors.JWKSMultipleMatchingKeys) {
      let kid: unknown;
      try {
        kid = decodeProtectedHeader(idToken).kid;
      } catch {}
      return refuse(`The ID token is signed with an unknown key (key id ${shown(kid ?? null)} is not in the provider's key set)`);
    }
    if (error instanceof errors.JOSEAlgNotAllowed) {
      let alg: unknown;
      try {
        alg = decodeProtectedHeader(idToken).alg;
      } catch {}
      return refuse(`The ID token is signed with algorithm ${shown(alg ?? null)}; Nubis accepts ${ALGORITHMS.join(', ')}`);
    }
    if (error instanceof errors.JWSInvalid || error instanceof errors.JWTInvalid) return refuse('The ID token is not a well-formed signed JWT');
    return refuse(`The ID token could not be verified: ${messageOf(error)}`);
  }

  /** The Nubis user name: the username claim, or `sub` when the claim is absent, lower-cased and checked. */
  #username(payload: JWTPayload): string {
    const { usernameClaim } = this.#config;
    const claim = payload[usernameClaim] === undefined ? 'sub' : usernameClaim;
    const value = payload[claim];
    if (typeof value !== 'string') throw new NubisError('AUTH_OIDC_INVALID', `The ID token's "${claim}" claim is not a string`);
    const username = value.toLowerCase();
    if (!USERNAME.test(username))
      throw new NubisError(
        'AUTH_OIDC_INVALID',
        `The ID token's "${claim}" claim ${shown(value)} is not a valid Nubis user name: it must be a letter then up to 62 letters, digits, '_', '.' or '-'`,
      );
    return username;
  }

  /** The groups claim: absent is none; strings only, at most 128 characters each, at most 256 of them. */
  #groups(payload: JWTPayload): string[] {
    const { groupsClaim } = this.#config;
    const value = payload[groupsClaim];
    if (value === undefined) return [];
    if (!Array.isArray(value)) throw new NubisError('AUTH_OIDC_INVALID', `The ID token's "${groupsClaim}" claim is not an array`);
    // A refusal rather than a cut: which groups would be dropped depends on the provider's order.
    if (value.length > MAX_GROUPS) throw new NubisError('AUTH_OIDC_INVALID', `The ID token has ${value.length} groups; at most ${MAX_GROUPS} are accepted`);
    const groups = value.filter((group): group is string => typeof group === 'string' && group !== '' && group.length <= MAX_GROUP_LENGTH);
    return [...new Set(groups)];
  }
}
