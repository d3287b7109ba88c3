/**
 * Snapshots, templates and clones of a real VM (the tiny guest with a dir-pool volume as vda):
 * bytes written to the disk come back after a rollback; with --with-memory the guest goes on from
 * the snapshot instant without a reboot (a value in its RAM-only root filesystem and its boot id
 * come back); bad input and a migration are refused with nothing changed; a template never
 * starts and a linked clone boots and reads the template's bytes; the template cannot be deleted
 * while it has one; deleting a VM deletes its snapshots, also those inside its volume's file.
 * One VM (and its clone) for the whole file.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import type { Vm } from '../../src/wire/schemas.ts';
import type { VmSnapshot } from '../../src/wire/snapshot-schemas.ts';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';

describe('VM snapshots, templates and clones', () => {
  const nubis = new NubisInstance('snapshots');
  let volumeFile = '';

  before(async () => {
    await nubis.up();
    for (const args of [
      ['pool', 'create', 'local', '--kind', 'dir'],
      ['volume', 'create', 'data', '--pool', 'local', '--size', '16M', '--host', 'host-1'],
      ['vm', 'create', 'snappy', '--image', 'tiny', '--memory', '128', '--disk', 'local/data'],
    ]) {
      const done = await nubis.cli(args);
      assert.equal(done.code, 0, `${args.join(' ')}: ${done.stderr}`);
    }
    volumeFile = execFileSync('find', [nubis.dataDir, '-name', 'data.qcow2'], { encoding: 'utf8' }).trim();
    assert.ok(volumeFile, 'the volume has a file');
  });
  after(() => nubis.destroy());

  /** Writes `text` at the start of the guest's disk, on the device (not only in its cache). */
  async function writeDisk(vm: string, text: string): Promise<void> {
    await runOnConsole(nubis, vm, `printf '%s\\n' ${text} | dd of=/dev/vda conv=fsync 2>/dev/null`);
  }

  /** The first line of the guest's disk, read past its page cache. */
  async function readDisk(vm: string): Promise<string> {
    const output = await runOnConsole(nubis, vm, `echo "disk=[$(dd if=/dev/vda bs=4096 count=1 iflag=direct 2>/dev/null | head -n 1)]"`);
    const match = /disk=\[([a-z0-9-]*)\]/.exec(output);
    assert.ok(match, `the disk's first line in ${JSON.stringify(output.slice(-300))}`);
    return match[1];
  }

  async function untilReady(vm: string): Promise<Vm> {
    const deadline = Date.now() + 120_000;
    for (;;) {
      const shown = await nubis.cliJson<Vm>(['vm', 'show', vm]);
      if (shown.ready && shown.state === 'running') return shown;
      if (Date.now() > deadline) assert.fail(`${vm} not ready: ${JSON.stringify(shown).slice(0, 300)}`);
      await delay(500);
    }
  }

  it('rolls the disk back to a disk-only snapshot (the running VM restarts from it)', async () => {
    await writeDisk('snappy', 'alpha-1');
    const taken = await nubis.cliJson<VmSnapshot>(['vm', 'snapshot', 'snappy', 'first']);
    assert.deepEqual([taken.name, taken.withMemory, taken.disks, taken.vmState], ['first', false, ['disk0'], 'running']);
    await writeDisk('snappy', 'bravo-2');
    const pidBefore = (await nubis.cliJson<Vm>(['vm', 'show', 'snappy'])).pid;
    const rolled = await nubis.cli(['vm', 'rollback', 'snappy', 'first']);
    assert.equal(rolled.code, 0, rolled.stderr);
    const after = await untilReady('snappy');
    assert.notEqual(after.pid, pidBefore, 'a disk-only rollback restarts QEMU');
    assert.equal(await readDisk('snappy'), 'alpha-1');
  });

  it('with --with-memory, the guest continues from the snapshot instant without a reboot', async () => {
    await writeDisk('snappy', 'charlie-3');
    const bootId = (await runOnConsole(nubis, 'snappy', 'echo 111 > /run-counter; echo "boot=$(cat /proc/sys/kernel/random/boot_id)"')).match(
      /boot=([0-9a-f-]{36})/,
    )?.[1];
    assert.ok(bootId);
    const taken = await nubis.cliJson<VmSnapshot>(['vm', 'snapshot', 'snappy', 'second', '--with-memory']);
    assert.equal(taken.withMemory, true);
    assert.ok((taken.memoryBytes ?? 0) > 1_000_000, `memory saved: ${taken.memoryBytes} bytes`);
    await runOnConsole(nubis, 'snappy', 'echo 222 > /run-counter');
    await writeDisk('snappy', 'delta-4');
    const rolled = await nubis.cli(['vm', 'rollback', 'snappy', 'second']);
    assert.equal(rolled.code, 0, rolled.stderr);
    const shown = await nubis.cliJson<Vm>(['vm', 'show', 'snappy']);
    assert.equal(shown.state, 'running');
    const output = await runOnConsole(nubis, 'snappy', 'echo "counter=$(cat /run-counter) boot=$(cat /proc/sys/kernel/random/boot_id)"');
    assert.match(output, /counter=111 /, "the value held only in RAM is the snapshot's");
    assert.match(output, new RegExp(`boot=${bootId}`), 'the same boot goes on');
    assert.equal(await readDisk('snappy'), 'charlie-3');
    const listed = await nubis.cliJson<VmSnapshot[]>(['vm', 'snapshot', 'list', 'snappy']);
    assert.deepEqual(
      listed.map((s) => [s.name, s.withMemory]),
      [
        ['first', false],
        ['second', true],
      ],
    );
  });

  it('refuses bad names, unknown and taken snapshots and a live migration, changing nothing', async () => {
    const refusals: Array<[string[], RegExp]> = [
      [['vm', 'snapshot', 'snappy', 'Bad_Name'], /name/i],
      [['vm', 'snapshot', 'snappy', 'first'], /VM snappy already has a snapshot first/],
      [['vm', 'rollback', 'snappy', 'nope'], /VM snappy has no snapshot nope; see nubis vm snapshot list snappy/],
      [['vm', 'snapshot', 'delete', 'snappy', 'nope'], /VM snappy has no snapshot nope/],
      [['vm', 'snapshot', 'nosuchvm', 'x'], /No VM nosuchvm/],
      [['vm', 'migrate', 'snappy'], /VM snappy has snapshots \(first, second\), which live in its host's files/],
      [['vm', 'clone', 'snappy', 'kid'], /VM snappy is no template; make it one first/],
    ];
    for (const [args, message] of refusals) {
      const refused = await nubis.cli(args);
      assert.notEqual(refused.code, 0, args.join(' '));
      assert.match(refused.stderr, message, args.join(' '));
    }
    const api = await nubis.api<{ code: string }>('POST', '/v1/vms/snappy/snapshots', { name: 'x', withMemory: 'yes' });
    assert.equal(api.status, 400);
    assert.equal((await nubis.cliJson<VmSnapshot[]>(['vm', 'snapshot', 'list', 'snappy'])).length, 2);
    assert.deepEqual(qcow2Snapshots(), 2, 'the volume holds the two snapshots, no more');
    assert.equal((await nubis.cliJson<Vm[]>(['vm', 'list'])).length, 1, 'no clone was made');
  });

  /** How many internal snapshots the volume's qcow2 file holds. */
  function qcow2Snapshots(): number {
    const info = JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', volumeFile], { encoding: 'utf8' })) as { snapshots?: unknown[] };
    return info.snapshots?.length ?? 0;
  }

  it('makes a template that never starts, and a linked clone that boots and reads its bytes', async () => {
    const running = await nubis.cli(['vm', 'template', 'snappy']);
    assert.notEqual(running.code, 0);
    assert.match(running.stderr, /stop it first/);
    assert.equal((await nubis.cli(['vm', 'stop', 'snappy', '--force'])).code, 0);
    const template = await nubis.cliJson<Vm>(['vm', 'template', 'snappy']);
    assert.equal(template.template, true);
    for (const args of [
      ['vm', 'start', 'snappy'],
      ['vm', 'rollback', 'snappy', 'first'],
    ]) {
      const refused = await nubis.cli(args);
      assert.match(refused.stderr, /VM snappy is a template/, args.join(' '));
    }
    // Readable by the template VM's own group alone: not by the group every VM's QEMU is in.
    const templateUid = statSync(join(nubis.dataDir, 'hosts', template.host, 'vms', template.id, 'run')).uid;
    const sealed = statSync(volumeFile);
    assert.deepEqual([sealed.uid, sealed.gid, sealed.mode & 0o777], [0, templateUid, 0o640], "the template's disk: root's, its own group's");
    const clone = await nubis.cliJson<Vm>(['vm', 'clone', 'snappy', 'kid', '--linked']);
    assert.equal(clone.linkedTo, template.id);
    await untilReady('kid');
    assert.equal(await readDisk('kid'), 'charlie-3', "the clone reads the template's disk (its QEMU, of a uid of its own, is in the template's group)");
    const kidFile = execFileSync('find', [nubis.dataDir, '-name', 'kid-data.qcow2'], { encoding: 'utf8' }).trim();
    const backing = JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', kidFile], { encoding: 'utf8' })) as { 'backing-filename'?: string };
    assert.equal(backing['backing-filename'], volumeFile, "the clone's disk is an overlay over the template's");
    const refused = await nubis.cli(['vm', 'delete', 'snappy']);
    assert.match(refused.stderr, /Template snappy has linked clones \(kid\)/);
  });

  it('deletes its snapshots with the VM, also those inside its volume', async () => {
    for (const vm of ['kid', 'snappy']) assert.equal((await nubis.cli(['vm', 'delete', vm])).code, 0);
    assert.equal(qcow2Snapshots(), 0);
  });
});
