/**
 * CPU controls on a real VM: a guest spinning on its CPU under `--cpu-limit 25%` gets about a
 * quarter of a host CPU, measured from its cgroup's own counters; `vm set --cpu-limit 50%` changes
 * that while it runs; the QEMU process is in the VM's group and the group goes with the VM. On
 * a busy machine the share a cap allows may not be there to take: the lower bound then counts
 * what the host had idle (see `measure`).
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { VmCgroups, detectCgroups } from '../../src/host/cgroups.ts';
import type { Vm } from '../../src/wire/schemas.ts';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';

/** How far a measured share may sit from the cap: the guest must reach most of it, and never pass it by more than the CFS period's rounding. */
const BELOW = 0.7;
const ABOVE = 1.1;
const WINDOW_MS = 10_000;

/** Idle time of the whole host so far, in microseconds (idle and iowait of /proc/stat's cpu line, in USER_HZ ticks of 10 ms). */
function hostIdleUs(): number {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return (fields[3] + fields[4]) * 10_000;
}

describe('CPU controls of a VM', () => {
  const nubis = new NubisInstance('cpu-controls');
  let cgroups: VmCgroups;
  let vm: Vm;

  before(async () => {
    cgroups = new VmCgroups(await detectCgroups());
    await nubis.up();
    const created = await nubis.cli(['vm', 'create', 'spin', '--image', 'tiny', '--cpus', '1', '--memory', '128', '--cpu-limit', '25%', '--cpu-weight', '50']);
    assert.equal(created.code, 0, created.stderr);
    vm = await nubis.cliJson<Vm>(['vm', 'show', 'spin']);
  });
  after(() => nubis.destroy());

  /**
   * The VM's CPU use over a window, in percent of one host CPU, from its cgroup's counter; and
   * what it could have had: its use plus the host's idle time (/proc/stat), at most one CPU (its
   * one vCPU). On a busy machine (other tests, other guests) a cap above the fair share cannot be
   * reached, so the lower bound is checked against what was there to take.
   */
  async function measure(): Promise<{ used: number; couldHave: number }> {
    const before = { usage: (await cgroups.cpuUsageUs(vm.id))!, idle: hostIdleUs() };
    const started = performance.now();
    await delay(WINDOW_MS);
    const windowUs = (performance.now() - started) * 1000;
    const usedUs = (await cgroups.cpuUsageUs(vm.id))! - before.usage;
    const idleUs = hostIdleUs() - before.idle;
    return { used: (usedUs / windowUs) * 100, couldHave: Math.min(100, ((usedUs + idleUs) / windowUs) * 100) };
  }

  /** Asserts a measured share against a cap: never above it, and most of it whenever the host had it to give. */
  function assertHeld(cap: number, { used, couldHave }: { used: number; couldHave: number }): void {
    const detail = `asked ${cap}%, measured ${used.toFixed(1)}% (could have had ${couldHave.toFixed(1)}%)`;
    assert.ok(used <= cap * ABOVE, detail);
    assert.ok(used >= Math.min(cap, couldHave) * BELOW, detail);
    console.log(`# CPU cap: ${detail}`);
  }

  /** The cap written in the VM's group: percent of one CPU, or undefined for none. */
  function writtenCap(): number | undefined {
    const layout = cgroups.layout;
    if (layout.version === 2) {
      const [quota, period] = readFileSync(join(layout.root, 'nubis', `vm-${vm.id}`, 'cpu.max'), 'utf8')
        .trim()
        .split(' ');
      return quota === 'max' ? undefined : (Number(quota) / Number(period)) * 100;
    }
    if (layout.version !== 1) return undefined;
    const read = (file: string) => Number(readFileSync(join(layout.cpu, 'nubis', `vm-${vm.id}`, file), 'utf8'));
    return read('cpu.cfs_quota_us') < 0 ? undefined : (read('cpu.cfs_quota_us') / read('cpu.cfs_period_us')) * 100;
  }

  it('shows the controls, and runs QEMU in the VM group', async () => {
    assert.equal(vm.cpuLimit, 25);
    assert.equal(vm.cpuWeight, 50);
    const shown = await nubis.cli(['vm', 'show', 'spin']);
    assert.match(shown.stdout, /CPU controls:\s+limit 25%, weight 50/);
    assert.ok(cgroups.available, 'this test bed has cgroups (HOST-FACTS)');
    const layout = cgroups.layout;
    const groupOf = layout.version === 2 ? layout.root : layout.version === 1 ? layout.cpu : '';
    const procs = readFileSync(join(groupOf, 'nubis', `vm-${vm.id}`, 'cgroup.procs'), 'utf8').split('\n');
    assert.ok(procs.includes(String(vm.pid)), `QEMU ${vm.pid} is in the VM's group (${procs.join(' ')})`);
  });

  it('holds a spinning guest to its 25% cap, then to 50% once changed while it runs', async () => {
    await runOnConsole(nubis, 'spin', '(while :; do :; done) >/dev/null 2>&1 & true');
    assert.equal(writtenCap(), 25);
    assertHeld(25, await measure());
    const changed = await nubis.cli(['vm', 'set', 'spin', '--cpu-limit', '50%']);
    assert.equal(changed.code, 0, changed.stderr);
    assert.match(changed.stdout, /CPU controls limit 50%, weight 50/);
    assert.equal(writtenCap(), 50, 'changed in the running VM group');
    assertHeld(50, await measure());
  });

  it('refuses a cap its vCPUs could never use, changing nothing', async () => {
    const refused = await nubis.cli(['vm', 'set', 'spin', '--cpu-limit', '150%']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /150% is more than VM spin's 1 vCPU\(s\) can use \(100%\)/);
    assert.equal((await nubis.cliJson<Vm>(['vm', 'show', 'spin'])).cpuLimit, 50);
  });

  it('takes a control away with none, and removes the group when the VM stops', async () => {
    const cleared = await nubis.cli(['vm', 'set', 'spin', '--cpu-limit', 'none', '--cpu-weight', 'none']);
    assert.equal(cleared.code, 0, cleared.stderr);
    assert.match(cleared.stdout, /CPU controls none/);
    assert.equal(writtenCap(), undefined);
    const stopped = await nubis.cli(['vm', 'stop', 'spin', '--force']);
    assert.equal(stopped.code, 0, stopped.stderr);
    const layout = cgroups.layout;
    const group = join(layout.version === 2 ? layout.root : layout.version === 1 ? layout.cpu : '', 'nubis', `vm-${vm.id}`);
    assert.equal(existsSync(group), false, `${group} is gone with its QEMU`);
  });
});
