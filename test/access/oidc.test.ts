/**
 * Login with a real OpenID provider (oidc-provider, the certified Node implementation) on
 * 127.0.0.1: the CLI's device login (RFC 8628) is approved by driving the provider's own pages
 * over HTTP as a browser would (user code form, confirmation, the login and consent pages of its
 * devInteractions; test/helpers/oidc-provider.ts), and the ID token it issues is verified by the
 * control plane's OidcVerifier.
 * Tokens it cannot be made to issue (expired, foreign issuer, unknown key) are signed here with
 * the provider's own key or a stranger's.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { generateKeyPair, type JWTPayload, SignJWT } from 'jose';
import { deviceLogin } from '../../src/access/oidc-device-login.ts';
import { OidcVerifier } from '../../src/access/oidc.ts';
import { isNubisError } from '../../src/core/errors.ts';
import { startOidcProvider, type TestOidcProvider } from '../helpers/oidc-provider.ts';

/** Asserts that `promise` is refused with `code` and a message matching `reason`. */
async function refused(promise: Promise<unknown>, code: string, reason: RegExp): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isNubisError(error, code), `expected ${code}, got ${String(error)}`);
    assert.match(error.message, reason);
    return true;
  });
}

describe('OpenID Connect login against a real provider', () => {
  let provider: TestOidcProvider;
  let issuer = '';
  let verifier: OidcVerifier;

  before(async () => {
    provider = await startOidcProvider({ clients: ['nubis-cli', 'other-app', 'short-lived'], deviceCodeTtlSeconds: { 'short-lived': 2 } });
    issuer = provider.issuer;
    verifier = new OidcVerifier({ issuer, clientId: 'nubis-cli' });
  });

  after(() => provider?.close());

  /** An ID token as the provider would sign it, with `claims` changed; `key`/`kid`/`alg` to forge one. */
  async function signed(claims: JWTPayload, header: { key?: CryptoKey | Uint8Array; kid?: string; alg?: string } = {}): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ iss: issuer, aud: 'nubis-cli', sub: 'alice', preferred_username: 'alice', iat: now, exp: now + 600, ...claims })
      .setProtectedHeader({ alg: header.alg ?? 'RS256', kid: header.kid ?? provider.keyId, typ: 'JWT' })
      .sign(header.key ?? provider.signingKey);
  }

  /** A device login of `clientId`, approved through the provider's pages as alice. */
  const loginAs = (clientId: string) => provider.login('alice', clientId);

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
      deviceLogin({ issuer, clientId: 'nubis-cli', onPrompt: (prompt) => (approval = provider.denyDeviceCode(prompt)) }),
      'AUTH_OIDC_DEVICE_DENIED',
      /denied/,
    );
    await approval;
  });

  it('reports a device code nobody approved as AUTH_OIDC_DEVICE_EXPIRED', async () => {
    await refused(deviceLogin({ issuer, clientId: 'short-lived', onPrompt: () => {} }), 'AUTH_OIDC_DEVICE_EXPIRED', /expired/);
  });

  it('waits 5 s longer between polls after slow_down (RFC 8628 §3.5)', async () => {
    provider.slowDownNextTokenRequest();
    const first = provider.tokenRequestsAt.length;
    const { idToken } = await loginAs('nubis-cli');
    assert.equal((await verifier.verifyIdToken(idToken)).username, 'alice');
    const [slowed, next] = provider.tokenRequestsAt.slice(first);
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
