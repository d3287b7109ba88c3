/**
 * Login with a real OpenID provider (oidc-provider, the certified Node implementation) on
 * 127.0.0.1: the CLI's device login (RFC 8628) is approved by driving the provider's own pages
 * over HTTP as a browser would (user code form, confirmation, the login and consent pages of its
 * devInteractions), and the ID token it issues is verified by the control plane's OidcVerifier.
 * Tokens it cannot be made to issue (expired, foreign issuer, unknown key) are signed here with
 * the provider's own key or a stranger's.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { exportJWK, generateKeyPair, type JWTPayload, SignJWT } from 'jose';
// @ts-expect-error oidc-provider ships no type declarations
import Provider from 'oidc-provider';
import { type DeviceLoginPrompt, deviceLogin } from '../../src/access/oidc-device-login.ts';
import { OidcVerifier } from '../../src/access/oidc.ts';
import { isNubisError } from '../../src/core/errors.ts';

const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const PROVIDER_KID = 'provider-key';
/** A public client (no secret) that may use only the device code grant, as Nubis's CLI is registered. */
const deviceClient = (clientId: string) => ({
  client_id: clientId,
  token_endpoint_auth_method: 'none',
  grant_types: [DEVICE_CODE_GRANT],
  response_types: [],
  redirect_uris: [],
});

/** A browser for the provider's pages: a cookie jar, manual redirects, and forms submitted with their hidden fields. */
class Browser {
  readonly #cookies = new Map<string, string>();

  async #fetch(url: string, init: RequestInit = {}): Promise<Response> {
    const cookie = [...this.#cookies].map(([name, value]) => `${name}=${value}`).join('; ');
    const response = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers as Record<string, string>), ...(cookie ? { cookie } : {}) } });
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const at = pair.indexOf('=');
      const [name, value] = [pair.slice(0, at).trim(), pair.slice(at + 1).trim()];
      if (value === '' || /expires=Thu, 01 Jan 1970/i.test(line)) this.#cookies.delete(name);
      else this.#cookies.set(name, value);
    }
    return response;
  }

  /** Loads `url` and follows redirects to the page they end on. */
  async open(url: string, init?: RequestInit): Promise<{ url: string; html: string }> {
    let response = await this.#fetch(url, init);
    for (let hops = 0; response.status >= 300 && response.status < 400; hops++) {
      assert.ok(hops < 10, 'too many redirects');
      url = new URL(response.headers.get('location')!, url).href;
      await response.body?.cancel();
      response = await this.#fetch(url);
    }
    const html = await response.text();
    assert.equal(response.status, 200, `${url} answered ${response.status}: ${html.slice(0, 300)}`);
    return { url, html };
  }

  /** Submits the page's first form with its own fields, changed by `fields` (undefined removes one). */
  submit(page: { url: string; html: string }, fields: Record<string, string | undefined>): Promise<{ url: string; html: string }> {
    const form = /<form\b([^>]*)>([\s\S]*?)<\/form>/.exec(page.html);
    assert.ok(form, `no form on ${page.url}`);
    const action = /\baction="([^"]*)"/.exec(form[1])?.[1].replaceAll('&amp;', '&') ?? page.url;
    const values = new Map<string, string>();
    for (const [input] of form[2].matchAll(/<input\b[^>]*>/g)) {
      const name = /\bname="([^"]*)"/.exec(input)?.[1];
      if (name) values.set(name, /\bvalue="([^"]*)"/.exec(input)?.[1] ?? '');
    }
    for (const [name, value] of Object.entries(fields)) value === undefined ? values.delete(name) : values.set(name, value);
    return this.open(new URL(action, page.url).href, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams([...values]),
    });
  }
}

/**
 * What a person does with the CLI's prompt: opens the verification page, types the code, confirms
 * (or aborts), signs in as `login` and consents. Returns once the provider shows its success page.
 */
async function approve(prompt: DeviceLoginPrompt, options: { login?: string; deny?: boolean } = {}): Promise<void> {
  const browser = new Browser();
  const entry = await browser.open(prompt.verificationUri);
  const confirm = await browser.submit(entry, { user_code: prompt.userCode });
  assert.match(confirm.html, /Confirm Device/);
  if (options.deny) {
    const denied = await browser.submit(confirm, { confirm: undefined, abort: 'yes' });
    assert.match(denied.html, /interrupted/);
    return;
  }
  let page = await browser.submit(confirm, {});
  for (let steps = 0; !/Sign-in Success/.test(page.html); steps++) {
    assert.ok(steps < 5, `stuck on ${page.url}: ${page.html.slice(0, 300)}`);
    if (/name="prompt" value="login"/.test(page.html)) page = await browser.submit(page, { login: options.login ?? 'alice', password: 'any' });
    else if (/name="prompt" value="consent"/.test(page.html)) page = await browser.submit(page, {});
    else assert.fail(`unexpected page ${page.url}: ${page.html.slice(0, 300)}`);
  }
}

/** Asserts that `promise` is refused with `code` and a message matching `reason`. */
async function refused(promise: Promise<unknown>, code: string, reason: RegExp): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isNubisError(error, code), `expected ${code}, got ${String(error)}`);
    assert.match(error.message, reason);
    return true;
  });
}

describe('OpenID Connect login against a real provider', () => {
  const server = createServer();
  let issuer = '';
  let provider: { callback(): (req: unknown, res: unknown) => void; use(middleware: unknown): void };
  let providerKey: CryptoKey;
  let verifier: OidcVerifier;
  /** Set by a test: the provider answers the next token request with slow_down. */
  let slowDownOnce = false;
  const tokenRequestsAt: number[] = [];

  before(async () => {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const { privateKey } = await generateKeyPair('RS256', { extractable: true });
    providerKey = privateKey;
    provider = new Provider(issuer, {
      clients: [deviceClient('nubis-cli'), deviceClient('other-app'), deviceClient('short-lived')],
      jwks: { keys: [{ ...(await exportJWK(privateKey)), kid: PROVIDER_KID, alg: 'RS256', use: 'sig' }] },
      features: { deviceFlow: { enabled: true }, devInteractions: { enabled: true } },
      // The `groups` scope releases the `groups` claim; `profile` the user name.
      claims: { openid: ['sub'], profile: ['preferred_username', 'name'], groups: ['groups'] },
      scopes: ['openid', 'profile', 'groups'],
      // Put the scope's claims into the ID token even though an access token is issued too
      // (Core §5.4 would otherwise leave them to the userinfo endpoint): Nubis reads only the ID token.
      conformIdTokenClaims: false,
      findAccount: async (_ctx: unknown, id: string) => ({
        accountId: id,
        claims: async () => ({ sub: id, preferred_username: id, name: id, groups: id === 'alice' ? ['ops', 'web-devs'] : [] }),
      }),
      ttl: { DeviceCode: (_ctx: unknown, _code: unknown, client: { clientId: string }) => (client.clientId === 'short-lived' ? 2 : 600) },
      cookies: { keys: ['nubis-test-cookie-key'] },
    });
    // The provider sends no `interval`, so RFC 8628's default of 5 s would apply; 1 s keeps the
    // test short. And a test can make it answer slow_down once.
    provider.use(async (ctx: { path: string; method: string; status: number; body: unknown }, next: () => Promise<void>) => {
      if (ctx.method === 'POST' && ctx.path === '/token') {
        tokenRequestsAt.push(Date.now());
        if (slowDownOnce) {
          slowDownOnce = false;
          ctx.status = 400;
          ctx.body = { error: 'slow_down', error_description: 'poll less often' };
          return;
        }
      }
      await next();
      if (ctx.method === 'POST' && ctx.path === '/device/auth' && ctx.status === 200) ctx.body = { ...(ctx.body as object), interval: 1 };
    });
    server.on('request', provider.callback());
    verifier = new OidcVerifier({ issuer, clientId: 'nubis-cli' });
  });

  after(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  /** An ID token as the provider would sign it, with `claims` changed; `key`/`kid`/`alg` to forge one. */
  async function signed(claims: JWTPayload, header: { key?: CryptoKey | Uint8Array; kid?: string; alg?: string } = {}): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ iss: issuer, aud: 'nubis-cli', sub: 'alice', preferred_username: 'alice', iat: now, exp: now + 600, ...claims })
      .setProtectedHeader({ alg: header.alg ?? 'RS256', kid: header.kid ?? PROVIDER_KID, typ: 'JWT' })
      .sign(header.key ?? providerKey);
  }

  /** A device login of `clientId`, approved through the provider's pages as `login`. */
  async function loginAs(clientId: string, login = 'alice'): Promise<{ idToken: string; prompt: DeviceLoginPrompt }> {
    let approval: Promise<void> | undefined;
    let shown: DeviceLoginPrompt | undefined;
    const result = await deviceLogin({
      issuer,
      clientId,
      onPrompt(prompt) {
        shown = prompt;
        approval = approve(prompt, { login });
      },
    });
    await approval;
    return { ...result, prompt: shown! };
  }

  it('logs alice in with the device grant, and the verifier reads her user name and groups from the ID token', async () => {
    const { idToken, prompt } = await loginAs('nubis-cli');
    assert.equal(prompt.verificationUri, `${issuer}/device`);
    assert.match(prompt.verificationUriComplete ?? '', /\/device\?user_code=/);
    assert.ok(prompt.expiresInSeconds > 0);
    const identity = await verifier.verifyIdToken(idToken);
    assert.equal(identity.username, 'alice');
    assert.equal(identity.subject, 'alice');
    assert.deepEqual(identity.groups, ['ops', 'web-devs']);
    assert.ok(identity.expiresAt.getTime() > Date.now(), 'the token expires in the future');
  });

  it('refuses a real ID token issued to another client', async () => {
    const { idToken } = await loginAs('other-app');
    await refused(verifier.verifyIdToken(idToken), 'AUTH_OIDC_INVALID', /audience "other-app", not nubis-cli/);
  });

  it('refuses a real ID token whose signature was changed by one byte', async () => {
    const { idToken } = await loginAs('nubis-cli');
    const [header, payload, signature] = idToken.split('.');
    const bytes = Buffer.from(signature, 'base64url');
    bytes[bytes.length >> 1] ^= 0x01;
    const tampered = `${header}.${payload}.${bytes.toString('base64url')}`;
    await refused(verifier.verifyIdToken(tampered), 'AUTH_OIDC_INVALID', /bad signature/);
  });

  it('refuses an expired ID token signed with the provider key, beyond the 30 s of tolerance', async () => {
    const now = Math.floor(Date.now() / 1000);
    await refused(verifier.verifyIdToken(await signed({ iat: now - 3700, exp: now - 60 })), 'AUTH_OIDC_INVALID', /expired at/);
    // Within the tolerance it still passes: clocks of provider and Nubis differ a little.
    assert.equal((await verifier.verifyIdToken(await signed({ iat: now - 3600, exp: now - 10 }))).username, 'alice');
  });

  it('refuses a token signed with a key the provider does not publish', async () => {
    const { privateKey: stranger } = await generateKeyPair('RS256');
    await refused(verifier.verifyIdToken(await signed({}, { key: stranger, kid: 'intruder' })), 'AUTH_OIDC_INVALID', /unknown key .*"intruder"/);
    // The provider's key id with another key: the signature cannot verify.
    await refused(verifier.verifyIdToken(await signed({}, { key: stranger })), 'AUTH_OIDC_INVALID', /bad signature/);
  });

  it('refuses a token of another issuer, and a token with a symmetric algorithm', async () => {
    await refused(verifier.verifyIdToken(await signed({ iss: 'https://idp.example.com' })), 'AUTH_OIDC_INVALID', /issuer "https:\/\/idp.example.com"/);
    const hmac = await signed({}, { key: new TextEncoder().encode('a shared secret of thirty-two bytes'), alg: 'HS256' });
    await refused(verifier.verifyIdToken(hmac), 'AUTH_OIDC_INVALID', /algorithm "HS256"/);
    await refused(verifier.verifyIdToken('not.a.jwt'), 'AUTH_OIDC_INVALID', /not a well-formed/);
  });

  it('maps the user name and groups claims, and refuses a user name Nubis cannot take', async () => {
    const mixed = await verifier.verifyIdToken(await signed({ preferred_username: 'Bob.Smith', groups: ['a', 7, 'x'.repeat(129), 'a', 'b'] }));
    assert.equal(mixed.username, 'bob.smith');
    assert.deepEqual(mixed.groups, ['a', 'b']);
    const noName = await verifier.verifyIdToken(await signed({ preferred_username: undefined, sub: 'carol', groups: undefined }));
    assert.equal(noName.username, 'carol', 'sub stands in when preferred_username is absent');
    assert.deepEqual(noName.groups, []);
    await refused(verifier.verifyIdToken(await signed({ preferred_username: 'bob smith' })), 'AUTH_OIDC_INVALID', /"bob smith" is not a valid Nubis user name/);
    await refused(verifier.verifyIdToken(await signed({ groups: 'ops' })), 'AUTH_OIDC_INVALID', /"groups" claim is not an array/);
    const tooMany = Array.from({ length: 257 }, (_, i) => `g${i}`);
    await refused(verifier.verifyIdToken(await signed({ groups: tooMany })), 'AUTH_OIDC_INVALID', /257 groups/);
    const byEmail = new OidcVerifier({ issuer, clientId: 'nubis-cli', usernameClaim: 'nick', groupsClaim: 'roles' });
    const custom = await byEmail.verifyIdToken(await signed({ nick: 'dave', roles: ['admins'] }));
    assert.deepEqual([custom.username, custom.groups], ['dave', ['admins']]);
  });

  it('reports a denial at the provider as AUTH_OIDC_DEVICE_DENIED', async () => {
    let approval: Promise<void> | undefined;
    await refused(
      deviceLogin({ issuer, clientId: 'nubis-cli', onPrompt: (prompt) => (approval = approve(prompt, { deny: true })) }),
      'AUTH_OIDC_DEVICE_DENIED',
      /denied/,
    );
    await approval;
  });

  it('reports a device code nobody approved as AUTH_OIDC_DEVICE_EXPIRED', async () => {
    await refused(deviceLogin({ issuer, clientId: 'short-lived', onPrompt: () => {} }), 'AUTH_OIDC_DEVICE_EXPIRED', /expired/);
  });

  it('waits 5 s longer between polls after slow_down (RFC 8628 §3.5)', async () => {
    slowDownOnce = true;
    const first = tokenRequestsAt.length;
    const { idToken } = await loginAs('nubis-cli');
    assert.equal((await verifier.verifyIdToken(idToken)).username, 'alice');
    const [slowed, next] = tokenRequestsAt.slice(first);
    assert.ok(next - slowed >= 5_900, `polled again after ${next - slowed} ms`);
  });

  it('stops when the signal aborts, with the signal reason', async () => {
    const controller = new AbortController();
    const reason = new Error('user pressed Ctrl-C');
    await assert.rejects(
      deviceLogin({ issuer, clientId: 'nubis-cli', signal: controller.signal, onPrompt: () => controller.abort(reason) }),
      (error) => error === reason,
    );
  });

  it('refuses a client the provider does not know, with the provider words', async () => {
    await refused(deviceLogin({ issuer, clientId: 'nobody', onPrompt: () => assert.fail('no prompt') }), 'AUTH_OIDC_DEVICE_FAILED', /invalid_client/);
  });

  it('tells an unreachable provider (503) from a bad token, and a discovery document for another issuer', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const deadIssuer = `http://127.0.0.1:${(closed.address() as AddressInfo).port}`;
    await new Promise((resolve) => closed.close(resolve));
    await refused(
      new OidcVerifier({ issuer: deadIssuer, clientId: 'nubis-cli' }).verifyIdToken(await signed({})),
      'AUTH_OIDC_UNAVAILABLE',
      /could not be read/,
    );
    const port = new URL(issuer).port;
    await refused(
      new OidcVerifier({ issuer: `http://localhost:${port}`, clientId: 'nubis-cli' }).verifyIdToken(await signed({})),
      'AUTH_OIDC_UNAVAILABLE',
      new RegExp(`names issuer "${issuer}", not http://localhost:${port}`),
    );
  });

  it('refuses an issuer that is plain http off loopback', () => {
    assert.throws(
      () => new OidcVerifier({ issuer: 'http://idp.example.com', clientId: 'nubis-cli' }),
      (error) => isNubisError(error, 'AUTH_OIDC_CONFIG_INVALID'),
    );
  });
});
