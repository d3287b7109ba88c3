import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NubisError } from '../../core/errors.ts';
import { canMigrateBetween, MINIMUM_QEMU_MAJOR, requireSupportedQemu } from './qemu-version.ts';

test('a QEMU at or above the minimum is accepted', () => {
  requireSupportedQemu(`QEMU emulator version ${MINIMUM_QEMU_MAJOR}.0.2 (Debian 1:${MINIMUM_QEMU_MAJOR}.0.2+ds-2~bpo12+1)`);
  requireSupportedQemu(`QEMU emulator version ${MINIMUM_QEMU_MAJOR + 1}.1.0`);
});

test("Debian 12's own QEMU 7.2 is refused with what to run", () => {
  assert.throws(
    () => requireSupportedQemu('QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)'),
    (error: unknown) => error instanceof NubisError && error.code === 'QEMU_TOO_OLD' && /7\.2\.22/.test(error.message) && /npm start/.test(error.message),
  );
});

test('a QEMU that cannot be run is named as missing', () => {
  assert.throws(
    () => requireSupportedQemu('unknown'),
    (error: unknown) => error instanceof NubisError && error.code === 'QEMU_MISSING',
  );
});

test('a VM migrates to the same or a newer QEMU, never to an older one', () => {
  const v = (version: string): string => `QEMU emulator version ${version} (Debian)`;
  assert.equal(canMigrateBetween(v('10.0.2'), v('10.0.2')), true);
  assert.equal(canMigrateBetween(v('10.0.2'), v('10.1.0')), true);
  assert.equal(canMigrateBetween(v('10.0.2'), v('11.0.0')), true);
  assert.equal(canMigrateBetween(v('10.1.0'), v('10.0.9')), false);
  assert.equal(canMigrateBetween(v('10.0.3'), v('10.0.2')), false);
  assert.equal(canMigrateBetween(null, v('10.0.2')), true, 'a host that did not say is not held against');
  assert.equal(canMigrateBetween(v('10.0.2'), 'unknown'), true);
});
