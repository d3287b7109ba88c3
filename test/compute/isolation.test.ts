/**
 * VM isolation on a real host: every VM's QEMU runs as an unprivileged user of its own, under
 * QEMU's seccomp sandbox, with no capabilities and no way to gain any, and each VM's user can
 * open its own files and nothing of another VM's or of the platform's. The checks are made as a
 * guest that took over its QEMU would try: by a process running as the VM's uid (spawned here as
 * that uid), opening the files and sockets by their paths.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Vm } from '../../src/wire/schemas.ts';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';

/** The fields of /proc/PID/status a check needs. */
function statusOf(pid: number): Record<string, string> {
  return Object.fromEntries(
    readFileSync(`/proc/${pid}/status`, 'utf8')
      .split('\n')
      .map((line) => line.split(/:\s*/, 2) as [string, string]),
  );
}

/**
 * Runs a small Node script as `uid` (and gid) with no supplementary groups and returns what it
 * printed: for each path, `ok` or the error code of opening it the way `how` says.
 */
function tryAs(uid: number, how: 'read' | 'connect' | 'list', paths: string[]): Record<string, string> {
  const script = `
    const fs = require('node:fs'); const net = require('node:net');
    const how = ${JSON.stringify(how)}; const paths = ${JSON.stringify(paths)}; const out = {};
    (async () => {
      for (const p of paths) {
        try {
          if (how === 'read') fs.closeSync(fs.openSync(p, 'r'));
          else if (how === 'list') fs.readdirSync(p);
          else await new Promise((ok, no) => { const s = net.connect(p, () => { s.destroy(); ok(); }); s.on('error', no); });
          out[p] = 'ok';
        } catch (e) { out[p] = e.code ?? String(e); }
      }
      console.log(JSON.stringify(out));
    })();`;
  const run = spawnSync(process.execPath, ['-e', script], { uid, gid: uid, encoding: 'utf8', timeout: 20_000 });
  assert.equal(run.status, 0, run.stderr);
  return JSON.parse(run.stdout) as Record<string, string>;
}

describe('VM isolation', { skip: process.getuid?.() !== 0 ? 'needs root: VMs run as users of their own only under a root agent' : false }, () => {
  const nubis = new NubisInstance('isolation');
  const vms: Record<string, { id: string; dir: string; pid: number; uid: number }> = {};

  before(async () => {
    await nubis.up(['--netns']);
    await nubis.cliJson(['network', 'create', 'iso', '--subnet', '10.94.0.0/24']);
    for (const name of ['isoa', 'isob']) {
      const vm = await nubis.cliJson<Vm>(['vm', 'create', name, '--image', 'tiny', '--memory', '128', '--network', 'iso']);
      const dir = join(nubis.dataDir, 'hosts', 'host-1', 'vms', vm.id);
      const pid = Number(readFileSync(join(dir, 'run', 'qemu.pid'), 'utf8'));
      vms[name] = { id: vm.id, dir, pid, uid: Number(statusOf(pid).Uid.split(/\s+/)[0]) };
    }
  });
  after(() => nubis.destroy());

  it('runs each QEMU as a user of its own, sandboxed, without capabilities or a way to gain them', () => {
    const { isoa, isob } = vms;
    assert.ok(isoa.uid >= 0x7000_0000, `VM isoa's QEMU runs as uid ${isoa.uid}, a VM uid`);
    assert.notEqual(isoa.uid, isob.uid, 'two VMs, two users');
    for (const vm of [isoa, isob]) {
      const status = statusOf(vm.pid);
      assert.deepEqual(new Set(status.Uid.split(/\s+/)), new Set([String(vm.uid)]), 'real, effective, saved and fs uid');
      assert.deepEqual(new Set(status.Gid.split(/\s+/)), new Set([String(vm.uid)]), 'its own group');
      assert.equal(status.CapEff, '0000000000000000');
      assert.equal(status.CapPrm, '0000000000000000');
      assert.equal(status.NoNewPrivs, '1');
      assert.equal(status.Seccomp, '2', "QEMU's seccomp filter is on");
      assert.match(readFileSync(`/proc/${vm.pid}/cmdline`, 'utf8'), /spawn=deny.*resourcecontrol=deny|elevateprivileges=deny/);
    }
  });

  it('says how its hosts keep VMs apart', async () => {
    const host = await nubis.cliJson<{ isolation?: { cgroups: string; vmUsers: boolean } }>(['host', 'show', 'host-1']);
    assert.equal(host.isolation?.vmUsers, true);
    assert.match(host.isolation?.cgroups ?? '', /^v[12]$/, 'this test bed has cgroup v1 controllers (HOST-FACTS); a stock Debian 12 host has v2');
    const shown = await nubis.cli(['host', 'show', 'host-1']);
    assert.match(shown.stdout, /isolation:\s+cgroup v[12], every VM its own unprivileged user/);
  });

  it('lets a VM user open its own files and none of another VM or of the platform', () => {
    const { isoa, isob } = vms;
    const own = tryAs(isoa.uid, 'read', [join(isoa.dir, 'run', 'serial.log')]);
    assert.deepEqual(Object.values(own), ['ok'], 'its own serial log: the checks below can succeed');
    assert.deepEqual(Object.values(tryAs(isoa.uid, 'connect', [join(isoa.dir, 'run', 'qmp.sock')])), ['ok'], 'its own QMP socket');
    const closed = [
      join(isob.dir, 'run', 'serial.log'),
      join(isob.dir, 'qemu.log'),
      join(isob.dir, 'vm.json'),
      join(nubis.dataDir, 'nubis.db'),
      join(nubis.dataDir, 'admin-token'),
      join(nubis.dataDir, 'control-key'),
      join(nubis.dataDir, 'hosts', 'host-1', 'agent.json'),
    ];
    // Each is there (root sees it), so a refusal is the permission, not a wrong path.
    for (const path of closed) assert.ok(existsSync(path), `${path} exists`);
    for (const [path, result] of Object.entries(tryAs(isoa.uid, 'read', closed))) assert.match(result, /EACCES|ENOENT/, `${path}: ${result}`);
    for (const [path, result] of Object.entries(tryAs(isoa.uid, 'connect', [join(isob.dir, 'run', 'qmp.sock'), join(isob.dir, 'run', 'console.sock')])))
      assert.equal(result, 'EACCES', `${path}: ${result}`);
    for (const [path, result] of Object.entries(tryAs(isoa.uid, 'list', [nubis.dataDir, join(nubis.dataDir, 'hosts', 'host-1', 'vms'), isob.dir])))
      assert.equal(result, 'EACCES', `listing ${path}: ${result}`);
    assert.equal(statSync(join(isob.dir, 'run')).uid, isob.uid, "VM isob's run folder is its user's");
    assert.equal(statSync(isob.dir).uid, 0, "the VM's folder stays root's: its user cannot swap what the agent opens there");
  });

  it("gives a file volume hot-plugged into a running VM to that VM's user while attached, and back to root once detached", async () => {
    const { isoa, isob } = vms;
    await nubis.cliJson(['pool', 'create', 'local', '--kind', 'dir']);
    await nubis.cliJson(['volume', 'create', 'hot', '--pool', 'local', '--size', '16M', '--host', 'host-1']);
    const file = join(nubis.dataDir, 'hosts', 'host-1', 'pools', 'local', 'hot.qcow2');
    assert.ok(existsSync(file), `${file} exists`);
    await nubis.cliJson(['vm', 'attach', 'isoa', 'local/hot']);
    assert.deepEqual([statSync(file).uid, statSync(file).mode & 0o777], [isoa.uid, 0o600], "the running VM's QEMU could open it");
    const write =
      'for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done; echo hot-data | dd of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null && echo wrote-it';
    const written = await runOnConsole(nubis, 'isoa', write, { timeoutMs: 60_000 });
    assert.match(written, /wrote-it/, 'the guest writes to the hot-plugged disk');
    assert.equal(tryAs(isob.uid, 'read', [file])[file], 'EACCES', 'another VM cannot open it');
    await nubis.cliJson(['vm', 'detach', 'isoa', 'local/hot']);
    assert.deepEqual([statSync(file).uid, statSync(file).mode & 0o777], [0, 0o600], "root's again");
    assert.equal(tryAs(isoa.uid, 'read', [file])[file], 'EACCES', 'the VM it left cannot open it any more, though its QEMU still runs');
  });

  it('hands QEMU its taps open, so the guests talk over the network without QEMU opening /dev/net/tun', async () => {
    assert.equal(statSync('/dev/net/tun').mode & 0o007, 0, 'only root may open /dev/net/tun');
    assert.match(readFileSync(`/proc/${vms.isoa.pid}/cmdline`, 'utf8').replaceAll('\0', ' '), /-netdev tap,id=net0,fd=\d+ /);
    const b = await nubis.cliJson<Vm>(['vm', 'show', 'isob']);
    const output = await runOnConsole(nubis, 'isoa', `ping -c 2 -W 5 ${b.nics[0].ip} && echo reached-b`, { timeoutMs: 60_000 });
    assert.match(output, /reached-b/);
  });
});
