import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { canonicalCommandLine, launchDifferences, verifyLaunch } from './launch-measurement.ts';

const digest = (c: string) => c.repeat(64);
const measured = {
  measuredAt: '2026-11-30T12:00:00.000Z',
  components: [
    { component: 'qemu-binary', path: '/usr/bin/qemu-system-x86_64', sha256: digest('a') },
    { component: 'initrd', path: '/images/tiny/initrd.img', sha256: digest('b') },
  ],
};

describe('launch measurement', () => {
  it('gives the same canonical command line on any host and for an incoming or paused start', () => {
    const here = canonicalCommandLine(['-name', 'guest=a', '-qmp', 'unix:/data/h1/vms/vm-1/qmp.sock', '-S', '-incoming', 'defer'], '/data/h1/vms/vm-1');
    const there = canonicalCommandLine(['-name', 'guest=a', '-qmp', 'unix:/data/h2/vms/vm-1/qmp.sock'], '/data/h2/vms/vm-1');
    assert.equal(here, '-name guest=a -qmp unix:<vm>/qmp.sock');
    assert.equal(here, there);
  });

  it('names each component that differs or was not measured, and nothing when all match', () => {
    assert.deepEqual(launchDifferences(measured, [{ component: 'qemu-binary', sha256: digest('a') }]), []);
    const differences = launchDifferences(measured, [
      { component: 'initrd', sha256: digest('c') },
      { component: 'firmware', sha256: digest('d') },
    ]);
    assert.deepEqual(differences, [
      `initrd (/images/tiny/initrd.img): measured ${'b'.repeat(16)}..., expected ${'c'.repeat(16)}...`,
      `firmware: expected ${'d'.repeat(16)}..., not measured`,
    ]);
  });

  it('refuses a mismatch with TRUSTED_LAUNCH_MISMATCH naming the VM and the component', () => {
    assert.throws(
      () => verifyLaunch('web1', measured, [{ component: 'initrd', sha256: digest('c') }]),
      (error: Error & { code?: string }) => {
        assert.equal(error.code, 'TRUSTED_LAUNCH_MISMATCH');
        assert.match(error.message, /^VM web1 was not started: .*initrd \(\/images\/tiny\/initrd\.img\): measured/);
        return true;
      },
    );
    assert.doesNotThrow(() => verifyLaunch('web1', measured, []));
  });
});
