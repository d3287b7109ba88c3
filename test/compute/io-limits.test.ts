/**
 * Disk IO limits on a real VM: a guest reading its data disk with direct 4 KiB reads gets the
 * operations a second `vm set --disk-iops` allows (within 10%), a limit changed while it runs
 * takes effect at once, a byte rate holds the same way, and lifting the limits gives the disk
 * its speed back. Timed inside the guest from /proc/uptime (centiseconds), so the console's
 * own latency is not counted.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Vm } from '../../src/wire/schemas.ts';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';

const TOLERANCE = 0.1;

describe('disk IO limits of a VM', () => {
  const nubis = new NubisInstance('io-limits');
  let unlimitedIops = 0;

  before(async () => {
    await nubis.up();
    for (const args of [
      ['pool', 'create', 'local', '--kind', 'dir'],
      ['volume', 'create', 'data', '--pool', 'local', '--size', '64M', '--host', 'host-1'],
      ['vm', 'create', 'io', '--image', 'tiny', '--memory', '128', '--disk', 'local/data'],
    ]) {
      const done = await nubis.cli(args);
      assert.equal(done.code, 0, `${args.join(' ')}: ${done.stderr}`);
    }
  });
  after(() => nubis.destroy());

  /** Seconds the guest took for `count` direct reads of `blockSize` from its data disk (vda: the tiny guest boots from no disk). */
  async function timedReads(count: number, blockSize: string): Promise<number> {
    const output = await runOnConsole(
      nubis,
      'io',
      `a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/vda of=/dev/null bs=${blockSize} count=${count} iflag=direct 2>/dev/null && b=$(cut -d' ' -f1 /proc/uptime) && echo "took $a $b"`,
      { timeoutMs: 120_000 },
    );
    const match = /took ([\d.]+) ([\d.]+)/.exec(output);
    assert.ok(match, `the guest timed its reads: ${output}`);
    return Number(match[2]) - Number(match[1]);
  }

  async function assertRate(what: string, asked: number, measured: number): Promise<void> {
    console.log(`# ${what}: asked ${asked}, measured ${measured.toFixed(1)}`);
    assert.ok(Math.abs(measured - asked) <= asked * TOLERANCE, `${what}: asked ${asked}, measured ${measured.toFixed(1)}`);
  }

  it('reads at full speed with no limit, faster than any limit below asks', async () => {
    unlimitedIops = 1000 / (await timedReads(1000, '4k'));
    console.log(`# without limits: ${unlimitedIops.toFixed(0)} reads/s`);
    assert.ok(unlimitedIops > 400, `the guest reads fast enough to show a limit of 200: ${unlimitedIops.toFixed(0)}/s`);
  });

  it('holds direct reads to the --disk-iops limit, and to a new one set while the VM runs', async () => {
    const set = await nubis.cli(['vm', 'set', 'io', '--disk-iops', 'vda=100']);
    assert.equal(set.code, 0, set.stderr);
    assert.match(set.stdout, /disk limits vda: iops 100/);
    await assertRate('reads/s at --disk-iops vda=100', 100, 1000 / (await timedReads(1000, '4k')));
    const faster = await nubis.cli(['vm', 'set', 'io', '--disk-iops', 'vda=200']);
    assert.equal(faster.code, 0, faster.stderr);
    await assertRate('reads/s at --disk-iops vda=200', 200, 1000 / (await timedReads(1000, '4k')));
    const shown = await nubis.cliJson<Vm>(['vm', 'show', 'io']);
    assert.deepEqual(shown.diskLimits, { vda: { iops: 200 } });
  });

  it('keeps the limits when the VM starts again', async () => {
    for (const action of ['stop', 'start']) {
      const done = await nubis.cli(['vm', action, 'io']);
      assert.equal(done.code, 0, done.stderr);
    }
    await assertRate('reads/s at --disk-iops vda=200 after a restart', 200, 600 / (await timedReads(600, '4k')));
  });

  it('holds reads to a byte rate, and lifts every limit with --disk-limits-none', async () => {
    const set = await nubis.cli(['vm', 'set', 'io', '--disk-iops', 'vda=none', '--disk-bps', 'vda=1M']);
    assert.equal(set.code, 0, set.stderr);
    assert.deepEqual((await nubis.cliJson<Vm>(['vm', 'show', 'io'])).diskLimits, { vda: { bytesPerSec: 2 ** 20 } });
    await assertRate('MiB/s at --disk-bps vda=1M', 1, 4 / (await timedReads(64, '64k')));
    const lifted = await nubis.cli(['vm', 'set', 'io', '--disk-limits-none', 'vda']);
    assert.equal(lifted.code, 0, lifted.stderr);
    assert.equal((await nubis.cliJson<Vm>(['vm', 'show', 'io'])).diskLimits, undefined);
    const iops = 1000 / (await timedReads(1000, '4k'));
    assert.ok(iops > 300, `unlimited again: ${iops.toFixed(0)} reads/s`);
  });

  it("shows what the VM does now: its host's latest CPU, disk and network rates", async () => {
    let shown = await nubis.cliJson<Vm>(['vm', 'show', 'io']);
    for (let tries = 0; !shown.activity && tries < 40; tries++) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      shown = await nubis.cliJson<Vm>(['vm', 'show', 'io']);
    }
    const activity = shown.activity;
    assert.ok(activity, 'a sample within 40 s (the agent samples every 10 s)');
    assert.ok(activity.cpu !== undefined && activity.cpu >= 0 && activity.cpu <= 1, `CPU ${activity.cpu}`);
    assert.ok((activity.memoryBytes ?? 0) > 0 && activity.diskReadBytesPerSec !== undefined);
    assert.match((await nubis.cli(['vm', 'show', 'io'])).stdout, /Activity:\s+CPU \d+%, disk read .+\/s write .+\/s, network in .+ out .+ \(at /);
    assert.equal((await nubis.cliJson<Vm[]>(['vm', 'list'])).find((vm) => vm.name === 'io')?.activity, undefined, 'lists stay cheap');
  });

  it('grows its data disk while it runs: the guest sees the new size at once', async () => {
    const grown = await nubis.cliJson<{ sizeBytes: number }>(['volume', 'resize', 'local/data', '96M']);
    assert.equal(grown.sizeBytes, 96 * 2 ** 20);
    const sectors = await runOnConsole(
      nubis,
      'io',
      'for i in $(seq 50); do [ "$(cat /sys/block/vda/size)" = 196608 ] && break; sleep 0.1; done; echo "sectors $(cat /sys/block/vda/size)"',
      { timeoutMs: 60_000 },
    );
    assert.match(sectors, /sectors 196608\b/, 'the guest sees 96 MiB');
    const shrink = await nubis.cli(['volume', 'resize', 'local/data', '64M']);
    assert.match(shrink.stderr, /dir volumes only grow/);
    assert.equal((await nubis.cliJson<{ sizeBytes: number }>(['volume', 'show', 'local/data'])).sizeBytes, 96 * 2 ** 20);
  });

  it('refuses limits that cannot mean anything, naming them, and changes nothing', async () => {
    for (const [args, message] of [
      [['--disk-iops', 'vdp=100'], /no disk vdp/],
      [['--disk-iops', 'vda=100', '--disk-iops-read', 'vda=50'], /iops for reads and writes together, or iopsRead\/iopsWrite, not both/],
      [['--disk-iops', 'vda=100', '--disk-iops-burst', 'vda=50'], /burst \(50\) is below the iops limit \(100\)/],
      [['--disk-iops', 'vda=lots'], /--disk-iops takes a whole number/],
      [['--disk-iops', 'sda=5'], /takes a disk and a value such as vdb=500/],
    ] as const) {
      const refused = await nubis.cli(['vm', 'set', 'io', ...args]);
      assert.notEqual(refused.code, 0, args.join(' '));
      assert.match(refused.stderr, message);
    }
    assert.equal((await nubis.cliJson<Vm>(['vm', 'show', 'io'])).diskLimits, undefined);
  });
});
