import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isNubisError } from '../core/errors.ts';
import { newTotpSecret, totpCode, totpUri, verifyTotp, verifyTotpStep } from './totp.ts';

/** RFC 6238 Appendix B: the SHA-1 seed, the ASCII string "12345678901234567890", in base32. */
const RFC_SECRET = 'GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ';

// RFC 6238 Appendix B, SHA-1 rows: Unix time in seconds and the 8-digit TOTP; an app with six
// digits shows the last six (the truncation is the same number modulo 10^6).
const RFC_VECTORS: [number, string][] = [
  [59, '94287082'],
  [1111111109, '07081804'],
  [1111111111, '14050471'],
  [1234567890, '89005924'],
  [2000000000, '69279037'],
  [20000000000, '65353130'],
];

describe('TOTP', () => {
  it('reads and writes base32 as RFC 4648 §10 spells it, without the padding', () => {
    // totpUri normalises the secret it is given (decode, encode), which shows both directions.
    const secretOf = (base32: string) => new URL(totpUri(base32, 'a')).searchParams.get('secret');
    assert.equal(secretOf('MZXW6==='), 'MZXW6');
    assert.equal(secretOf('mzxw6ytboi======'), 'MZXW6YTBOI');
    assert.equal(secretOf('MZXW6YTB'), 'MZXW6YTB');
  });

  it('computes the RFC 6238 Appendix B SHA-1 codes', () => {
    for (const [seconds, eight] of RFC_VECTORS) assert.equal(totpCode(RFC_SECRET, seconds * 1000), eight.slice(-6), `T = ${seconds}`);
  });

  it('accepts the RFC codes at their time and refuses them a step beyond the window', () => {
    for (const [seconds, eight] of RFC_VECTORS) {
      const code = eight.slice(-6);
      assert.equal(verifyTotp(RFC_SECRET, code, seconds * 1000), true);
      assert.equal(verifyTotp(RFC_SECRET, code, seconds * 1000 + 30_000, 1), true, 'the next step still takes it');
      assert.equal(verifyTotp(RFC_SECRET, code, seconds * 1000 - 30_000, 1), true, 'the previous step already takes it');
      assert.equal(verifyTotp(RFC_SECRET, code, seconds * 1000 + 60_000, 1), false, 'two steps later it is gone');
      assert.equal(verifyTotp(RFC_SECRET, code, seconds * 1000 + 30_000, 0), false, 'window 0 takes only the current step');
    }
  });

  it('names the step that matched, so the store can refuse a replay', () => {
    const at = 1111111111 * 1000;
    const step = Math.floor(1111111111 / 30);
    assert.equal(verifyTotpStep(RFC_SECRET, '050471', at), step);
    assert.equal(verifyTotpStep(RFC_SECRET, '050471', at + 30_000), step);
    assert.equal(verifyTotpStep(RFC_SECRET, '000000', at), undefined);
  });

  it('refuses anything that is not exactly six digits', () => {
    const at = 59_000;
    for (const code of ['287082 ', ' 287082', '94287082', '28708', '28708x', '２８７０８２', '', '287-082'])
      assert.equal(verifyTotp(RFC_SECRET, code, at), false, JSON.stringify(code));
    assert.equal(verifyTotp(RFC_SECRET, 42 as unknown as string, at), false);
  });

  it('makes 160-bit secrets that round-trip through base32 without padding', () => {
    const secret = newTotpSecret();
    assert.match(secret, /^[A-Z2-7]{32}$/);
    assert.notEqual(newTotpSecret(), secret);
    // A secret as a user might type it (lower case, spaced) gives the same codes.
    const typed = secret.toLowerCase().replace(/(.{4})/g, '$1 ');
    assert.equal(totpCode(typed, 1_700_000_000_000), totpCode(secret, 1_700_000_000_000));
    assert.equal(verifyTotp(secret, totpCode(secret)), true);
  });

  it('refuses a secret that is not base32', () => {
    assert.throws(
      () => totpCode('not-base32!'),
      (error) => isNubisError(error, 'AUTH_TOTP_SECRET_INVALID'),
    );
    assert.throws(
      () => totpCode(''),
      (error) => isNubisError(error, 'AUTH_TOTP_SECRET_INVALID'),
    );
  });

  it('writes an otpauth URI with the values URL-encoded', () => {
    const uri = new URL(totpUri(RFC_SECRET, 'alice@example.com', 'Nubis Lab'));
    assert.equal(uri.protocol, 'otpauth:');
    assert.equal(uri.host, 'totp');
    assert.equal(decodeURIComponent(uri.pathname), '/Nubis Lab:alice@example.com');
    assert.match(totpUri(RFC_SECRET, 'a:b'), /^otpauth:\/\/totp\/Nubis:a%3Ab\?/);
    assert.equal(uri.searchParams.get('secret'), RFC_SECRET);
    assert.equal(uri.searchParams.get('issuer'), 'Nubis Lab');
    assert.equal(uri.searchParams.get('algorithm'), 'SHA1');
    assert.equal(uri.searchParams.get('digits'), '6');
    assert.equal(uri.searchParams.get('period'), '30');
    assert.doesNotMatch(totpUri(RFC_SECRET, 'bob', 'Nubis Lab'), /\+/);
  });
});
