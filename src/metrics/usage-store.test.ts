import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { HostUsageReport, VmUsageSample } from '../wire/event-schemas.ts';
import { RoundRobinSeries } from './rrd.ts';
import { UsageStore } from './usage-store.ts';

const T0 = Date.parse('2026-11-30T00:00:00.000Z');

function vmSample(change: Partial<VmUsageSample> = {}): VmUsageSample {
  return {
    vm: 'vm-1',
    pid: 100,
    cpus: 2,
    cpuSeconds: 0,
    memoryBytes: 64 * 2 ** 20,
    diskReadBytes: 0,
    diskWriteBytes: 0,
    netRxBytes: 0,
    netTxBytes: 0,
    ...change,
  };
}

function report(atMs: number, vms: VmUsageSample[], cpu = { total: atMs / 1000, idle: atMs / 2000 }): HostUsageReport {
  return {
    at: new Date(atMs).toISOString(),
    host: { cpuTotalSeconds: cpu.total, cpuIdleSeconds: cpu.idle, cpus: 4, memoryUsedBytes: 2 ** 30, memoryTotalBytes: 4 * 2 ** 30 },
    vms,
  };
}

describe('round-robin series', () => {
  it('keeps the last hour at 10 s and consolidates the day into 5-minute averages and maxima', () => {
    const series = new RoundRobinSeries(1);
    // 30 values, one every 10 s, over five minutes: 0, 1, ..., 29.
    for (let i = 0; i < 30; i++) series.add(T0 + i * 10_000, [i]);
    const hour = series.read('hour', T0 + 290_000);
    assert.equal(hour.stepsStart.length, 360);
    assert.equal(hour.stepSeconds, 10);
    assert.deepEqual(
      hour.average[0].slice(-30),
      Array.from({ length: 30 }, (_, i) => i),
    );
    assert.equal(hour.average[0][0], null, 'nothing reported an hour ago');
    const day = series.read('day', T0 + 290_000);
    assert.equal(day.stepsStart.length, 288);
    assert.equal(day.average[0].at(-1), 14.5, 'the mean of 0..29');
    assert.equal(day.max[0].at(-1), 29);
  });

  it('wraps around: a slot an hour old is overwritten, and read back as missing when not', () => {
    const series = new RoundRobinSeries(1);
    series.add(T0, [1]);
    series.add(T0 + 3600_000, [2]);
    const hour = series.read('hour', T0 + 3600_000);
    assert.equal(hour.average[0].at(-1), 2);
    assert.equal(hour.average[0].filter((v) => v !== null).length, 1, 'the value of an hour ago left its slot to the new one');
    const later = series.read('hour', T0 + 7200_000 + 5000);
    assert.ok(
      later.average[0].every((v) => v === null),
      'two hours on, nothing of the last hour is known',
    );
  });
});

describe('usage store', () => {
  it('turns counters into rates: CPU as a fraction of the vCPUs, bytes per second', () => {
    const store = new UsageStore();
    store.record('host-1', report(T0, [vmSample()]), T0);
    store.record(
      'host-1',
      report(T0 + 10_000, [vmSample({ cpuSeconds: 5, diskReadBytes: 10_000, diskWriteBytes: 20_000, netRxBytes: 30_000, netTxBytes: 40_000 })]),
      T0 + 10_000,
    );
    const series = store.vm('vm-1', 'hour', T0 + 10_000)!;
    assert.equal(series.average.cpu.at(-1), 0.25, '5 CPU seconds in 10 s over 2 vCPUs');
    assert.equal(series.average.cpu.at(-2), null, 'the first sample has no rate');
    assert.equal(series.average.memoryBytes.at(-1), 64 * 2 ** 20);
    assert.deepEqual(
      [
        series.average.diskReadBytesPerSec.at(-1),
        series.average.diskWriteBytesPerSec.at(-1),
        series.average.netRxBytesPerSec.at(-1),
        series.average.netTxBytesPerSec.at(-1),
      ],
      [1000, 2000, 3000, 4000],
    );
    assert.deepEqual(store.vmNow('vm-1', T0 + 15_000), {
      sampledAt: new Date(T0 + 10_000).toISOString(),
      cpu: 0.25,
      memoryBytes: 64 * 2 ** 20,
      diskReadBytesPerSec: 1000,
      diskWriteBytesPerSec: 2000,
      netRxBytesPerSec: 3000,
      netTxBytesPerSec: 4000,
    });
    assert.equal(store.vmNow('vm-1', T0 + 60_000), undefined, 'a sample older than three periods is no news');
    const host = store.host('host-1', 'hour', T0 + 10_000)!;
    assert.equal(host.average.cpu.at(-1), 0.5);
    assert.equal(host.average.diskReadBytesPerSec.at(-1), 1000, "a host's disk is what its VMs moved");
    assert.equal(host.memoryTotalBytes, 4 * 2 ** 30);
  });

  it('gives no rate across a counter reset (a new QEMU process), then rates again', () => {
    const store = new UsageStore();
    store.record('host-1', report(T0, [vmSample({ cpuSeconds: 500, diskReadBytes: 9e9 })]), T0);
    store.record('host-1', report(T0 + 10_000, [vmSample({ pid: 200, cpuSeconds: 1, diskReadBytes: 1000 })]), T0 + 10_000);
    store.record('host-1', report(T0 + 20_000, [vmSample({ pid: 200, cpuSeconds: 3, diskReadBytes: 11_000 })]), T0 + 20_000);
    const series = store.vm('vm-1', 'hour', T0 + 20_000)!;
    assert.equal(series.average.cpu.at(-2), null, 'no negative or huge rate after the restart');
    assert.equal(series.average.diskReadBytesPerSec.at(-2), null);
    assert.equal(series.average.cpu.at(-1), 0.1);
    assert.equal(series.average.diskReadBytesPerSec.at(-1), 1000);
    // A counter that went back without a new pid (a reset device) gives no rate either.
    store.record('host-1', report(T0 + 30_000, [vmSample({ pid: 200, cpuSeconds: 4, diskReadBytes: 5 })]), T0 + 30_000);
    assert.equal(store.vm('vm-1', 'hour', T0 + 30_000)!.average.diskReadBytesPerSec.at(-1), null);
  });

  it('saves atomically and reads the series back after a restart; a deleted VM is dropped', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nubis-usage-'));
    try {
      const file = join(dir, 'usage.json');
      const store = new UsageStore({ file });
      for (let i = 0; i < 40; i++)
        store.record('host-1', report(T0 + i * 10_000, [vmSample({ cpuSeconds: i * 2 }), vmSample({ vm: 'vm-2', cpuSeconds: i })]), T0 + i * 10_000);
      await store.stop();
      assert.equal(JSON.parse(readFileSync(file, 'utf8')).version, 1);
      const reloaded = new UsageStore({ file });
      await reloaded.load();
      for (const range of ['hour', 'day'] as const)
        assert.deepEqual(reloaded.vm('vm-1', range, T0 + 400_000), store.vm('vm-1', range, T0 + 400_000), `the ${range} survives`);
      assert.deepEqual(reloaded.host('host-1', 'day', T0 + 400_000), store.host('host-1', 'day', T0 + 400_000));
      reloaded.dropVm('vm-2');
      assert.equal(reloaded.vm('vm-2', 'hour'), undefined);
      reloaded.keepOnly(new Set(), new Set(['host-1']));
      assert.equal(reloaded.vm('vm-1', 'hour'), undefined, 'a VM gone while the control plane was down');
      assert.ok(reloaded.host('host-1', 'hour'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
