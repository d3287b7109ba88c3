/**
 * The cgroup files each CPU control writes, in both versions, against fake trees (a folder per
 * hierarchy with the files the kernel would offer). The real v1 tree of the test bed is exercised
 * by test/compute/cpu-controls.test.ts, with a VM whose CPU use is measured.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { NubisError } from '../core/errors.ts';
import { VmCgroups, detectCgroups } from './cgroups.ts';

const root = mkdtempSync(join(tmpdir(), 'nubis-cgroups-'));
after(() => rmSync(root, { recursive: true, force: true }));

const read = (...path: string[]) => readFileSync(join(...path), 'utf8');

function mountsFile(lines: string[]): string {
  const file = join(root, `mounts-${Math.random().toString(36).slice(2)}`);
  writeFileSync(file, `${lines.join('\n')}\n`);
  return file;
}

describe('cgroup detection', () => {
  it('takes v2 when its hierarchy offers the cpu controller', async () => {
    const mounts = mountsFile(['sysfs /sys sysfs rw 0 0', 'cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0']);
    assert.deepEqual(await detectCgroups(mounts, async () => 'cpuset cpu io memory pids\n'), { version: 2, root: '/sys/fs/cgroup' });
  });

  it('takes v1 when v2 is mounted empty beside the v1 controllers (this test bed), together or apart', async () => {
    const apart = mountsFile([
      'cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0',
      'cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0',
      'cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0',
      'cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0',
    ]);
    assert.deepEqual(await detectCgroups(apart, async () => '\n'), {
      version: 1,
      cpu: '/sys/fs/cgroup/cpu',
      cpuacct: '/sys/fs/cgroup/cpuacct',
      cpuset: '/sys/fs/cgroup/cpuset',
    });
    const together = mountsFile(['cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0', 'cgroup /sys/fs/cgroup/cpuset cgroup rw,cpuset 0 0']);
    assert.deepEqual(await detectCgroups(together), {
      version: 1,
      cpu: '/sys/fs/cgroup/cpu,cpuacct',
      cpuacct: '/sys/fs/cgroup/cpu,cpuacct',
      cpuset: '/sys/fs/cgroup/cpuset',
    });
  });

  it('says what is missing when neither can serve', async () => {
    const layout = await detectCgroups(mountsFile(['cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0']));
    assert.equal(layout.version, 'none');
    assert.match(layout.version === 'none' ? layout.reason : '', /cpu, cpuacct, cpuset/);
  });
});

describe('VM cgroups on a v2 tree', () => {
  const tree = join(root, 'v2');
  mkdirSync(tree);
  const cgroups = new VmCgroups({ version: 2, root: tree }, 4);

  it('makes nubis/vm-ID with the controllers handed down, applies the controls, then moves the process in', async () => {
    await cgroups.place('vm-1', 4242, { limitPercent: 25, weight: 200, pin: '1-2' });
    const dir = join(tree, 'nubis', 'vm-vm-1');
    assert.equal(read(tree, 'cgroup.subtree_control'), '+cpu +cpuset');
    assert.equal(read(tree, 'nubis', 'cgroup.subtree_control'), '+cpu +cpuset');
    assert.equal(read(dir, 'cpu.max'), '25000 100000');
    assert.equal(read(dir, 'cpu.weight'), '200');
    assert.equal(read(dir, 'cpuset.cpus'), '1-2');
    assert.equal(read(dir, 'cgroup.procs'), '4242');
  });

  it('sets a control left out back to the default (no cap, weight 100, every CPU)', async () => {
    await cgroups.apply('vm-1', { limitPercent: 150 });
    const dir = join(tree, 'nubis', 'vm-vm-1');
    assert.equal(read(dir, 'cpu.max'), '150000 100000');
    assert.equal(read(dir, 'cpu.weight'), '100');
    assert.equal(read(dir, 'cpuset.cpus'), '');
    await cgroups.apply('vm-1', undefined);
    assert.equal(read(dir, 'cpu.max'), 'max 100000');
  });

  it('reads the CPU time used from cpu.stat', async () => {
    writeFileSync(join(tree, 'nubis', 'vm-vm-1', 'cpu.stat'), 'usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n');
    assert.equal(await cgroups.cpuUsageUs('vm-1'), 1_234_567);
    assert.equal(await cgroups.cpuUsageUs('vm-2'), undefined, 'no group, no figure');
  });

  it('refuses what must not reach a file, before writing anything', async () => {
    const refused = (code: string) => (error: NubisError) => error.code === code;
    await assert.rejects(cgroups.apply('vm-1', { pin: '0-1\n+memory' }), refused('VALIDATION_FAILED'));
    await assert.rejects(cgroups.apply('vm-1', { limitPercent: 0 }), refused('VALIDATION_FAILED'));
    await assert.rejects(cgroups.apply('vm-1', { weight: 10_001 }), refused('VALIDATION_FAILED'));
    await assert.rejects(cgroups.apply('vm-1', { pin: '2-7' }), refused('HOST_CPU_CONTROLS_UNAVAILABLE'), 'CPU 7 of a 4-CPU host');
    await assert.rejects(cgroups.apply('../../etc', {}), refused('VALIDATION_FAILED'));
    await assert.rejects(cgroups.place('vm-1', -1, {}), refused('VALIDATION_FAILED'));
    assert.equal(read(tree, 'nubis', 'vm-vm-1', 'cpu.max'), 'max 100000', 'unchanged');
  });
});

describe('VM cgroups on a v1 tree', () => {
  const tree = join(root, 'v1');
  const layout = { version: 1 as const, cpu: join(tree, 'cpu'), cpuacct: join(tree, 'cpuacct'), cpuset: join(tree, 'cpuset') };
  for (const dir of [layout.cpu, layout.cpuacct, layout.cpuset]) mkdirSync(dir, { recursive: true });
  writeFileSync(join(layout.cpuset, 'cpuset.cpus'), '0-3\n');
  writeFileSync(join(layout.cpuset, 'cpuset.mems'), '0\n');
  const cgroups = new VmCgroups(layout, 4);

  it('joins the cpu, cpuacct and cpuset hierarchies, the cpuset given CPUs and memory nodes first', async () => {
    await cgroups.place('vm-1', 4242, { limitPercent: 50, weight: 50 });
    assert.equal(read(layout.cpu, 'nubis', 'vm-vm-1', 'cpu.cfs_quota_us'), '50000');
    assert.equal(read(layout.cpu, 'nubis', 'vm-vm-1', 'cpu.cfs_period_us'), '100000');
    assert.equal(read(layout.cpu, 'nubis', 'vm-vm-1', 'cpu.shares'), '512', 'weight 50 is half the default 1024 shares');
    assert.equal(read(layout.cpuset, 'nubis', 'cpuset.mems'), '0');
    assert.equal(read(layout.cpuset, 'nubis', 'vm-vm-1', 'cpuset.mems'), '0');
    assert.equal(read(layout.cpuset, 'nubis', 'vm-vm-1', 'cpuset.cpus'), '0-3', 'unpinned: every CPU of its parent');
    for (const hierarchy of [layout.cpu, layout.cpuacct, layout.cpuset]) assert.equal(read(hierarchy, 'nubis', 'vm-vm-1', 'cgroup.procs'), '4242');
  });

  it('pins and unpins, caps and uncaps', async () => {
    await cgroups.apply('vm-1', { pin: '3' });
    assert.equal(read(layout.cpuset, 'nubis', 'vm-vm-1', 'cpuset.cpus'), '3');
    assert.equal(read(layout.cpu, 'nubis', 'vm-vm-1', 'cpu.cfs_quota_us'), '-1');
    await cgroups.apply('vm-1', {});
    assert.equal(read(layout.cpuset, 'nubis', 'vm-vm-1', 'cpuset.cpus'), '0-3');
  });

  it('reads the CPU time used from cpuacct.usage (nanoseconds)', async () => {
    writeFileSync(join(layout.cpuacct, 'nubis', 'vm-vm-1', 'cpuacct.usage'), '2500000000\n');
    assert.equal(await cgroups.cpuUsageUs('vm-1'), 2_500_000);
  });
});

describe('a host without CPU controllers', () => {
  const cgroups = new VmCgroups({ version: 'none', reason: 'no cgroup v1 cpu mounted' });

  it('runs VMs without controls, and refuses controls saying why', async () => {
    await cgroups.place('vm-1', 4242, undefined);
    await cgroups.place('vm-1', 4242, {});
    await assert.rejects(cgroups.place('vm-1', 4242, { limitPercent: 50 }), /cannot apply CPU controls: no cgroup v1 cpu mounted/);
  });
});
