import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isNubisError } from '../core/errors.ts';
import { resolveKernelModules } from './kernel-modules.ts';

/** A fake lib/modules/<version> tree; each module's bytes carry a .modinfo-style depends field. */
function fakeModules(t: { after: (fn: () => void) => void }, modules: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'nubis-modules-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  for (const [path, depends] of Object.entries(modules)) {
    mkdirSync(join(root, 'kernel', path, '..'), { recursive: true });
    writeFileSync(join(root, 'kernel', path), Buffer.from(`\x7fELF...\0license=GPL\0depends=${depends}\0vermagic=6.1\0`, 'latin1'));
  }
  return root;
}

test('every module comes after the modules it depends on', (t) => {
  const dir = fakeModules(t, {
    'drivers/virtio/virtio_ring.ko': '',
    'drivers/virtio/virtio.ko': 'virtio_ring',
    'drivers/virtio/virtio_pci.ko': 'virtio_ring,virtio',
    'net/core/failover.ko': '',
    'drivers/net/net_failover.ko': 'failover',
    'drivers/net/virtio_net.ko': 'virtio_ring,virtio,net_failover',
  });
  const names = resolveKernelModules(dir, ['virtio_pci', 'virtio_net']).map((module) => module.name);
  assert.deepEqual(names, ['virtio_ring', 'virtio', 'virtio_pci', 'failover', 'net_failover', 'virtio_net']);
});

test('dashes and underscores name the same module, and each is listed once', (t) => {
  const dir = fakeModules(t, { 'drivers/a/virtio-rng.ko': '', 'drivers/b/user.ko': 'virtio_rng' });
  assert.deepEqual(
    resolveKernelModules(dir, ['user', 'virtio-rng']).map((module) => module.name),
    ['virtio_rng', 'user'],
  );
});

test('a missing module is an IMAGE_BUILD_FAILED error naming it and who needs it', (t) => {
  const dir = fakeModules(t, { 'drivers/net/virtio_net.ko': 'net_failover' });
  assert.throws(
    () => resolveKernelModules(dir, ['virtio_net']),
    (error: unknown) => isNubisError(error, 'IMAGE_BUILD_FAILED') && /net_failover, which virtio_net needs/.test(error.message),
  );
});
