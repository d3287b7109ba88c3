import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ensureGuestKernel } from './guest-kernel.ts';

test('a cached kernel is returned without asking apt', async (t) => {
  const cacheDir = mkdtempSync(join(tmpdir(), 'nubis-kernel-'));
  t.after(() => rmSync(cacheDir, { recursive: true, force: true }));
  const unpacked = join(cacheDir, 'kernels', 'linux-image-6.1.0-99-amd64_6.1.999-1');
  mkdirSync(join(unpacked, 'boot'), { recursive: true });
  mkdirSync(join(unpacked, 'lib', 'modules', '6.1.0-99-amd64'), { recursive: true });
  writeFileSync(join(unpacked, 'boot', 'vmlinuz-6.1.0-99-amd64'), 'not really a kernel');
  writeFileSync(join(cacheDir, 'kernels', 'current.json'), JSON.stringify({ packageName: 'linux-image-6.1.0-99-amd64', packageVersion: '6.1.999-1' }));
  const progress: string[] = [];
  // A package this old is in no apt list: reaching apt at all would fail or download.
  const kernel = await ensureGuestKernel(cacheDir, (message) => progress.push(message));
  assert.deepEqual(kernel, {
    kernelPath: join(unpacked, 'boot', 'vmlinuz-6.1.0-99-amd64'),
    modulesDir: join(unpacked, 'lib', 'modules', '6.1.0-99-amd64'),
    version: '6.1.0-99-amd64',
    packageName: 'linux-image-6.1.0-99-amd64',
    packageVersion: '6.1.999-1',
  });
  assert.deepEqual(progress, []);
});
