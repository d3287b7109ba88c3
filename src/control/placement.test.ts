import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { HostView } from './hosts.ts';
import { placeVm } from './placement.ts';

function host(name: string, change: Partial<HostView> = {}): HostView {
  return {
    id: `host-${name}`,
    name,
    status: 'online',
    endpoint: 'unix:/x',
    accelerator: 'tcg',
    acceleratorReason: '',
    cpus: 2,
    memoryMb: 4096,
    allocatedCpus: 0,
    allocatedMemoryMb: 0,
    vmCount: 0,
    lastSeenAt: '',
    joinedAt: '',
    ...change,
  };
}

describe('placeVm', () => {
  it('picks the least-loaded host with room', () => {
    const hosts = [host('a', { allocatedMemoryMb: 2048 }), host('b', { allocatedMemoryMb: 512 })];
    assert.equal(placeVm(hosts, { cpus: 1, memoryMb: 256 }).name, 'b');
  });

  it('honours a pin and refuses an unknown host', () => {
    const hosts = [host('a', { allocatedMemoryMb: 2048 }), host('b')];
    assert.equal(placeVm(hosts, { cpus: 1, memoryMb: 256, host: 'a' }).name, 'a');
    assert.throws(() => placeVm(hosts, { cpus: 1, memoryMb: 256, host: 'zz' }), { code: 'HOST_NOT_FOUND' });
  });

  it('refuses a VM larger than any host, naming each host and what it lacks', () => {
    const hosts = [host('a'), host('b', { status: 'offline' })];
    assert.throws(
      () => placeVm(hosts, { cpus: 1, memoryMb: 100_000 }),
      (error: Error & { code: string }) => {
        assert.equal(error.code, 'NO_HOST_FITS');
        assert.match(error.message, /a has 3584 MiB free for VMs, the VM needs 100000 MiB/);
        assert.match(error.message, /b is offline/);
        return true;
      },
    );
    assert.throws(() => placeVm(hosts, { cpus: 9, memoryMb: 256 }), /8 vCPUs left/);
  });
});
