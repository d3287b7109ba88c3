/**
 * A real OpenID provider for tests: oidc-provider (the certified Node implementation) on
 * 127.0.0.1 with the device flow (RFC 8628) and its development login pages, and a browser that
 * approves a device code by driving those pages over HTTP as a person would (user code form,
 * confirmation, login, consent). Shared by the verifier's tests and the sign-in tests through the
 * whole platform.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair } from 'jose';
// @ts-expect-error oidc-provider ships no type declarations
import Provider from 'oidc-provider';
import { type DeviceLoginPrompt, deviceLogin } from '../../src/access/oidc-device-login.ts';

const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

/** The options of `startOidcProvider`, each with its default. */
export interface OidcProviderOptions {
  /**
   * Public clients (no secret) that may use only the device code grant, as Nubis's CLI is
   * registered; the first is `clientId` of the result. Default `['nubis-cli']`.
   */
  clients?: string[];
  /** Lifetime of a device code by client id, in seconds; default 600 for a client not named. */
  deviceCodeTtlSeconds?: Record<string, number>;
  /** The groups of each account (an account is any name typed at login); default alice in ops and web-devs, others in none. */
  groups?: Record<string, string[]>;
  /**
   * The polling interval the provider announces. oidc-provider sends none, so RFC 8628's default
   * of 5 s would apply; default 1 s keeps tests short.
   */
  pollIntervalSeconds?: number;
}

/** What a person does with the CLI's prompt: the page to open and the code to type there. */
export type DevicePrompt = Pick<DeviceLoginPrompt, 'verificationUri' | 'userCode'>;

/** A running provider. */
export interface TestOidcProvider {
  /** The issuer identifier, `http://127.0.0.1:PORT`. */
  issuer: string;
  /** The first client of the options. */
  clientId: string;
  /** The provider's signing key and its key id, to sign tokens it cannot be made to issue. */
  signingKey: CryptoKey;
  keyId: string;
  /** When each token request (the device flow's polls) arrived, in ms since the epoch. */
  tokenRequestsAt: number[];
  /** Makes the provider answer the next token request with slow_down (RFC 8628 §3.5). */
  slowDownNextTokenRequest(): void;
  /** Approves the device code of `prompt` through the provider's pages, signed in as `account`. */
  approveDeviceCode(prompt: DevicePrompt, account: string): Promise<void>;
  /** Refuses the device code of `prompt` on the provider's confirmation page. */
  denyDeviceCode(prompt: DevicePrompt): Promise<void>;
  /** A device login of `clientId` (Nubis's own `deviceLogin`), approved as `account`: its ID token and the prompt it showed. */
  login(account: string, clientId?: string): Promise<{ idToken: string; prompt: DeviceLoginPrompt }>;
  /** Stops the provider and drops its connections. */
  close(): Promise<void>;
}

/** A public client that may use only the device code grant. */
const deviceClient = (clientId: string) => ({
  client_id: clientId,
  token_endpoint_auth_method: 'none',
  grant_types: [DEVICE_CODE_GRANT],
  response_types: [],
  redirect_uris: [],
});

/** Starts an OpenID provider on 127.0.0.1 on a free port. */
export async function startOidcProvider(options: OidcProviderOptions = {}): Promise<TestOidcProvider> {
  const clients = options.clients ?? ['nubis-cli'];
  const groups = options.groups ?? { alice: ['ops', 'web-devs'] };
  const interval = options.pollIntervalSeconds ?? 1;
  const keyId = 'provider-key';
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const provider = new Provider(issuer, {
    clients: clients.map(deviceClient),
    jwks: { keys: [{ ...(await exportJWK(privateKey)), kid: keyId, alg: 'RS256', use: 'sig' }] },
    features: { deviceFlow: { enabled: true }, devInteractions: { enabled: true } },
    // The `groups` scope releases the `groups` claim; `profile` the user name.
    claims: { openid: ['sub'], profile: ['preferred_username', 'name'], groups: ['groups'] },
    scopes: ['openid', 'profile', 'groups'],
    // Put the scope's claims into the ID token even though an access token is issued too
    // (Core §5.4 would otherwise leave them to the userinfo endpoint): Nubis reads only the ID token.
    conformIdTokenClaims: false,
    findAccount: async (_ctx: unknown, id: string) => ({
      accountId: id,
      claims: async () => ({ sub: id, preferred_username: id, name: id, groups: groups[id] ?? [] }),
    }),
    ttl: { DeviceCode: (_ctx: unknown, _code: unknown, client: { clientId: string }) => options.deviceCodeTtlSeconds?.[client.clientId] ?? 600 },
    cookies: { keys: ['nubis-test-cookie-key'] },
  });
  const tokenRequestsAt: number[] = [];
  let slowDownOnce = false;
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
    if (ctx.method === 'POST' && ctx.path === '/device/auth' && ctx.status === 200) ctx.body = { ...(ctx.body as object), interval };
  });
  server.on('request', provider.callback());

  return {
    issuer,
    clientId: clients[0],
    signingKey: privateKey,
    keyId,
    tokenRequestsAt,
    slowDownNextTokenRequest: () => {
      slowDownOnce = true;
    },
    approveDeviceCode: (prompt, account) => approve(prompt, { account }),
    denyDeviceCode: (prompt) => approve(prompt, { deny: true }),
    async login(account, clientId = clients[0]) {
      // A failed approval stops the polling at once: deviceLogin would otherwise wait for the code to expire.
      const stop = new AbortController();
      let approval: Promise<unknown> = Promise.resolve();
      let shown: DeviceLoginPrompt | undefined;
      const result = await deviceLogin({
        issuer,
        clientId,
        signal: stop.signal,
        onPrompt(prompt) {
          shown = prompt;
          approval = approve(prompt, { account }).catch((error: unknown) => stop.abort(error));
        },
      });
      await approval;
      return { ...result, prompt: shown! };
    },
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * Opens the verification page, types the code, confirms (or aborts), signs in as `account` with
 * any password and consents. Resolves once the provider shows its success (or abort) page.
 */
async function approve(prompt: DevicePrompt, options: { account?: string; deny?: boolean }): Promise<void> {
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
    if (/name="prompt" value="login"/.test(page.html)) page = await browser.submit(page, { login: options.account ?? 'alice', password: 'any' });
    else if (/name="prompt" value="consent"/.test(page.html)) page = await browser.submit(page, {});
    else assert.fail(`unexpected page ${page.url}: ${page.html.slice(0, 300)}`);
  }
}

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
