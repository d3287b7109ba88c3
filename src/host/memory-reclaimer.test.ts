import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { VmSpec } from '../compute/vm-spec.ts';
import { MemoryReclaimer, parseMemoryStall } from './memory-reclaimer.ts';

const proc = mkdtempSync(join(tmpdir(), 'nubis-reclaim-proc-'));
mkdirSync(join(proc, 'pressure'));

function hostHas(totalMb: number, availableMb: number): void {
  writeFileSync(join(proc, 'meminfo'), `MemTotal:       ${totalMb * 1024} kB\nMemFree:        1 kB\nMemAvailable:   ${availableMb * 1024} kB\n`);
  writeFileSync(join(proc, 'pressure', 'memory'), 'some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n');
}

/** A QMP that reports an idle 1 GiB guest and records the balloon targets it is given. */
function fakeQmp(balloons: number[]) {
  return {
    execute: async (command: string, args?: Record<string, unknown>) => {
      if (command === 'balloon') balloons.push((args!.value as number) / 2 ** 20);
      if (command === 'qom-get')
        return { stats: { 'stat-total-memory': 984 * 2 ** 20, 'stat-available-memory': 884 * 2 ** 20 }, 'last-update': Math.floor(Date.now() / 1000) };
      return {};
    },
  } as never;
}

describe('MemoryReclaimer', () => {
  after(() => rmSync(proc, { recursive: true, force: true }));
  const spec = { id: 'vm-1', name: 'idle', memoryMb: 1024, memoryReclaim: true } as VmSpec;

  it('reads the stall figure of /proc/pressure/memory', () => {
    assert.equal(parseMemoryStall('some avg10=12.34 avg60=1.00 avg300=0.00 total=5\nfull avg10=0.00'), 12.34);
    assert.equal(parseMemoryStall(''), undefined);
  });

  it('balloons a guest that allows it while the host is short, and gives it back once there is room', async () => {
    const balloons: number[] = [];
    const targets = new Map<string, number>();
    const source = { vm: 'vm-1', pid: 1, cpus: 1, taps: [], diskBytes: async () => ({ readBytes: 0, writtenBytes: 0 }), qmp: fakeQmp(balloons) };
    const reclaimer = new MemoryReclaimer({ sources: () => [source], spec: () => spec, targets, procRoot: proc });
    hostHas(16_000, 2_000);
    assert.equal((await reclaimer.round()).length, 1);
    assert.deepEqual(balloons, [896]);
    assert.equal(targets.get('vm-1'), 896);
    hostHas(16_000, 8_000);
    await reclaimer.round();
    assert.deepEqual(balloons, [896, 1024]);
    assert.equal(targets.has('vm-1'), false, 'all given back');
  });

  it('leaves a guest alone that did not ask for reclaim', async () => {
    const balloons: number[] = [];
    const source = { vm: 'vm-1', pid: 1, cpus: 1, taps: [], diskBytes: async () => ({ readBytes: 0, writtenBytes: 0 }), qmp: fakeQmp(balloons) };
    const reclaimer = new MemoryReclaimer({ sources: () => [source], spec: () => ({ ...spec, memoryReclaim: undefined }), targets: new Map(), procRoot: proc });
    hostHas(16_000, 1_000);
    assert.deepEqual(await reclaimer.round(), []);
    assert.deepEqual(balloons, []);
  });
});
