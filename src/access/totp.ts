/**
 * Time-based one-time passwords (RFC 6238) as authenticator apps compute them: HMAC-SHA1, six
 * digits, a 30 s step, the secret shared as base32 (RFC 4648 §6) in an `otpauth://` URI. Written
 * with node:crypto only, so the second factor of a Nubis login depends on no package.
 *
 * RFC 6238 §5.2 also asks the verifier to accept each code once: that needs the last accepted
 * step, which the user store keeps; `verifyTotpStep` returns the step so the store can refuse a
 * replay inside the skew window.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { NubisError } from '../core/errors.ts';

/** RFC 6238 §4.1: X, the step in seconds; 30 is the default every authenticator app assumes. */
const STEP_SECONDS = 30;
const DIGITS = 6;
/** RFC 4226 §4 R6 asks for at least 128 bits of shared secret and recommends 160. */
const SECRET_BYTES = 20;
const BASE32_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 §6 base32 without the `=` padding, the form authenticator apps take. */
function base32Encode(bytes: Buffer): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32_ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32_ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

/**
 * Decodes base32 as people copy it: any case, with spaces or `=` padding. Anything else is an
 * error rather than a silently shorter key, which would make every code wrong.
 */
function base32Decode(text: string): Buffer {
  const clean = text.replace(/[\s=]/g, '').toUpperCase();
  const bytes: number[] = [];
  let bits = 0;
  let value = 0;
  for (const char of clean) {
    const index = BASE32_ALPHABET.indexOf(char);
    if (index < 0) throw new NubisError('AUTH_TOTP_SECRET_INVALID', `The TOTP secret is not base32: it contains '${char}'`);
    value = ((value << 5) | index) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bytes.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  if (bytes.length === 0) throw new NubisError('AUTH_TOTP_SECRET_INVALID', 'The TOTP secret is empty');
  return Buffer.from(bytes);
}

/** RFC 4226 §5.3: HOTP(K, C), the dynamically truncated HMAC-SHA1 of the 8-byte big-endian counter. */
function hotp(key: Buffer, counter: number): string {
  const message = Buffer.alloc(8);
  message.writeBigUInt64BE(BigInt(counter));
  const mac = createHmac('sha1', key).update(message).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const binary = mac.readUInt32BE(offset) & 0x7fffffff;
  return String(binary % 10 ** DIGITS).padStart(DIGITS, '0');
}

/** RFC 6238 §4.2: T = floor((Current Unix time - T0) / X) with T0 = 0. */
function stepAt(atMs: number): number {
  return Math.floor(atMs / 1000 / STEP_SECONDS);
}

/**
 * A new shared secret: 20 random bytes (160 bits, the length RFC 4226 §4 recommends for
 * HMAC-SHA1) as 32 base32 characters without padding, ready for `totpUri` and for storage.
 */
export function newTotpSecret(): string {
  return base32Encode(randomBytes(SECRET_BYTES));
}

/**
 * The `otpauth://totp/Issuer:account?secret=...` URI an authenticator app reads from a QR code
 * (Google Authenticator's Key URI Format). Issuer and account are URL-encoded, so a `:` or `@`
 * in them cannot split the label; algorithm, digits and period are spelled out although they are
 * the defaults, because some apps ignore an issuer-less or parameter-less URI differently.
 */
export function totpUri(secret: string, account: string, issuer = 'Nubis'): string {
  const label = `${encodeURIComponent(issuer)}:${encodeURIComponent(account)}`;
  const query = new URLSearchParams({
    secret: base32Encode(base32Decode(secret)),
    issuer,
    algorithm: 'SHA1',
    digits: String(DIGITS),
    period: String(STEP_SECONDS),
  });
  return `otpauth://totp/${label}?${query.toString().replaceAll('+', '%20')}`;
}

/**
 * The six-digit code for the step that contains `atMs` (RFC 6238 §4 over RFC 4226 HOTP with
 * HMAC-SHA1): what the user's app shows at that moment. For tests and for showing the expected
 * code while a user enrols.
 */
export function totpCode(secret: string, atMs: number = Date.now()): string {
  return hotp(base32Decode(secret), stepAt(atMs));
}

/**
 * The step whose code `code` is, looking `window` steps either side of `atMs` for clock skew
 * (RFC 6238 §5.2 recommends at most one step back), or undefined. Only exactly six ASCII digits
 * are considered. Every candidate is compared in constant time and all of them are computed, so
 * the time taken says nothing about which step, if any, matched. The caller that keeps the last
 * accepted step refuses a step at or before it: that is the replay protection of §5.2.
 */
export function verifyTotpStep(secret: string, code: string, atMs: number = Date.now(), window = 1): number | undefined {
  if (!Number.isInteger(window) || window < 0 || window > 10) throw new RangeError(`TOTP window must be an integer from 0 to 10, not ${window}`);
  const key = base32Decode(secret);
  if (typeof code !== 'string' || !/^[0-9]{6}$/.test(code)) return undefined;
  const given = Buffer.from(code, 'ascii');
  const now = stepAt(atMs);
  let matched: number | undefined;
  for (let step = now - window; step <= now + window; step++) {
    if (step < 0) continue;
    if (timingSafeEqual(Buffer.from(hotp(key, step), 'ascii'), given) && matched === undefined) matched = step;
  }
  return matched;
}

/**
 * Whether `code` is the user's current code, or the one of the step before or after (`window`
 * steps, default 1) to forgive clock skew, as RFC 6238 §5.2 allows. Anything but exactly six
 * digits is refused; the comparison is constant-time (crypto.timingSafeEqual). This does not
 * stop a replay of the same code: see `verifyTotpStep`.
 */
export function verifyTotp(secret: string, code: string, atMs = Date.now(), window = 1): boolean {
  return verifyTotpStep(secret, code, atMs, window) !== undefined;
}
