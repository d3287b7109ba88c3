/** Resource identifiers: a short type prefix and random hex, e.g. `vm-3f9c1a2b7d4e`. */
import { randomBytes } from 'node:crypto';

export function newId(prefix: string): string {
  return `${prefix}-${randomBytes(6).toString('hex')}`;
}

/** A secret for tokens: 32 random bytes, URL-safe. */
export function newSecret(prefix: string): string {
  return `${prefix}_${randomBytes(32).toString('base64url')}`;
}

/** A locally administered unicast MAC in QEMU's 52:54:00 range. */
export function newMac(): string {
  const bytes = randomBytes(3);
  return `52:54:00:${[...bytes].map((b) => b.toString(16).padStart(2, '0')).join(':')}`;
}
