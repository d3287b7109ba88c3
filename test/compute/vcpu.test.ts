/**
 * vCPU topology and hot-add with a real guest: a VM created with 1 of 4 vCPUs in 2 sockets x 2
 * cores boots with one CPU and that layout; `vm set --cpus 3` hot-adds two while it runs and the
 * guest brings them online; fewer are refused while it runs; a live migration to a second host
 * keeps the three (the destination's QEMU starts with them) and placement counts the maximum of
 * four there; a lower count set while it is stopped applies at its next start.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { Vm } from '../../src/wire/schemas.ts';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';

/**
 * Waits in the guest (up to 20 s) until it has `count` CPUs online, then prints `nproc` and the
 * online list: the guest onlines a hot-added vCPU when the kernel announces it, a moment after
 * QEMU plugged it.
 */
const waitForCpus = (count: number) =>
  `i=0; while [ "$(nproc)" != ${count} ] && [ $i -lt 200 ]; do usleep 100000; i=$((i+1)); done; echo "nproc=$(nproc) online=$(cat /sys/devices/system/cpu/online)"`;

/** `cat` of each topology file of `cpu`, as `name=value` words. */
const topologyOf = (cpu: number) =>
  `cd /sys/devices/system/cpu/cpu${cpu}/topology && for f in physical_package_id core_id core_cpus_list package_cpus_list; do echo "$f=$(cat $f)"; done; cd /`;

/** QEMU's -smp of the VM's running process. */
function smpOf(vm: Vm): string {
  const args = readFileSync(`/proc/${vm.pid}/cmdline`, 'utf8').split('\0');
  return args[args.indexOf('-smp') + 1];
}

describe('vCPU topology and hot-add', { skip: process.getuid?.() !== 0 ? 'needs root for network namespaces' : false }, () => {
  const nubis = new NubisInstance('vcpu');
  let vm: Vm;

  before(async () => {
    await nubis.up(['--hosts', '2']);
    await nubis.cliJson(['network', 'create', 'cnet', '--subnet', '10.93.0.0/24']);
    vm = await nubis.cliJson<Vm>([
      'vm',
      'create',
      'cpu1',
      '--image',
      'tiny',
      '--memory',
      '128',
      '--cpus',
      '1',
      '--max-cpus',
      '4',
      '--sockets',
      '2',
      '--cores',
      '2',
      '--network',
      'cnet',
      '--host',
      'host-1',
    ]);
  });
  after(() => nubis.destroy());

  it('boots 1 of 4 vCPUs laid out as 2 sockets x 2 cores, and places it by the 4', async () => {
    assert.deepEqual([vm.cpus, vm.maxCpus, vm.cpuTopology], [1, 4, { sockets: 2, cores: 2, threads: 1 }]);
    assert.equal(smpOf(vm), 'cpus=1,maxcpus=4,sockets=2,cores=2,threads=1');
    const shown = await nubis.cli(['vm', 'show', 'cpu1']);
    assert.match(shown.stdout, /vCPUs: +1 of 4 maximum \(2 sockets x 2 cores x 1 thread\)/);
    const host = await nubis.cliJson<{ allocatedCpus: number }>(['host', 'show', 'host-1']);
    assert.equal(host.allocatedCpus, 4, 'the host counts the maximum');
    const guest = await runOnConsole(
      nubis,
      'cpu1',
      `${waitForCpus(1)}; echo "possible=$(cat /sys/devices/system/cpu/possible)"; ${topologyOf(0)}; dmesg | grep 'Allowing'`,
    );
    assert.match(guest, /nproc=1 online=0\r?\n/);
    assert.match(guest, /possible=0-3/, 'the guest knows of four possible CPUs');
    assert.match(guest, /physical_package_id=0\r?\ncore_id=0\r?\n/);
    // Four possible CPUs, three of them to come. With one CPU online the kernel shows no more of
    // the layout (its figures count booted cores); the sockets show once vCPUs are added, below.
    assert.match(guest, /Allowing 4 CPUs, 3 hotplug CPUs/);
  });

  it('hot-adds vCPUs while it runs: the guest brings them online in their sockets', async () => {
    const changed = await nubis.cliJson<Vm>(['vm', 'set', 'cpu1', '--cpus', '3']);
    assert.deepEqual([changed.cpus, changed.maxCpus, changed.state], [3, 4, 'running']);
    const guest = await runOnConsole(nubis, 'cpu1', `${waitForCpus(3)}; ${topologyOf(1)}; ${topologyOf(2)}`);
    assert.match(guest, /nproc=3 online=0-2\r?\n/);
    // cpu1 is socket 0's second core, cpu2 socket 1's first: filled as -smp fills them.
    assert.match(guest, /physical_package_id=0\r?\ncore_id=1\r?\ncore_cpus_list=1\r?\npackage_cpus_list=0-1\r?\n/);
    assert.match(guest, /physical_package_id=1\r?\ncore_id=0\r?\ncore_cpus_list=2\r?\npackage_cpus_list=2\r?\n/);
  });

  it('refuses fewer vCPUs while it runs, changing nothing', async () => {
    const fewer = await nubis.cli(['vm', 'set', 'cpu1', '--cpus', '2']);
    assert.notEqual(fewer.code, 0);
    assert.match(fewer.stderr, /VM cpu1 runs with 3 vCPUs; vCPUs are not removed from a running guest.*Stop it, set --cpus 2, then start it/s);
    assert.equal((await nubis.cliJson<Vm>(['vm', 'show', 'cpu1'])).cpus, 3);
    const above = await nubis.cli(['vm', 'set', 'cpu1', '--cpus', '5']);
    assert.match(above.stderr, /5 vCPUs is more than its maximum of 4/);
  });

  it('keeps its vCPUs across a live migration, and the new host counts the maximum', async () => {
    const moved = await nubis.cliJson<{ to: string }>(['vm', 'migrate', 'cpu1', '--to', 'host-2', '--strategy', 'precopy']);
    assert.equal(moved.to, 'host-2');
    const shown = await nubis.cliJson<Vm>(['vm', 'show', 'cpu1']);
    assert.deepEqual([shown.host, shown.state, shown.cpus, shown.maxCpus], ['host-2', 'running', 3, 4]);
    assert.equal(smpOf(shown), 'cpus=3,maxcpus=4,sockets=2,cores=2,threads=1', 'the destination started with the three');
    const hosts = await Promise.all(['host-1', 'host-2'].map((host) => nubis.cliJson<{ allocatedCpus: number }>(['host', 'show', host])));
    assert.deepEqual(
      hosts.map((host) => host.allocatedCpus),
      [0, 4],
      'placement moved the maximum with it',
    );
    assert.match(await runOnConsole(nubis, 'cpu1', waitForCpus(3)), /nproc=3 online=0-2\r?\n/);
    // And it can still grow there, to its maximum.
    assert.equal((await nubis.cliJson<Vm>(['vm', 'set', 'cpu1', '--cpus', '4'])).cpus, 4);
    assert.match(await runOnConsole(nubis, 'cpu1', waitForCpus(4)), /nproc=4 online=0-3\r?\n/);
  });

  it('takes fewer vCPUs set while it is stopped at its next start', async () => {
    assert.equal((await nubis.cliJson<Vm>(['vm', 'stop', 'cpu1'])).state, 'stopped');
    const set = await nubis.cliJson<Vm>(['vm', 'set', 'cpu1', '--cpus', '2']);
    assert.deepEqual([set.cpus, set.maxCpus], [2, 4]);
    const started = await nubis.cliJson<Vm>(['vm', 'start', 'cpu1']);
    assert.equal(smpOf(started), 'cpus=2,maxcpus=4,sockets=2,cores=2,threads=1');
    assert.match(await runOnConsole(nubis, 'cpu1', waitForCpus(2)), /nproc=2 online=0-1\r?\n/);
  });
});
