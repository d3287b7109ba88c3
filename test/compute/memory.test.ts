/**
 * Memory of a real VM through its balloon: a VM created below its maximum starts ballooned;
 * `vm set --memory` down and up changes the guest's own MemTotal and QEMU's resident memory on
 * the host; memory the guest freed comes back to the host; a value above the maximum is refused
 * with nothing changed; a change while stopped holds at the next start. One VM for the file.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import type { Vm } from '../../src/wire/schemas.ts';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';

const MAX_MB = 384;

describe('Memory of a VM through its balloon', () => {
  const nubis = new NubisInstance('memory');
  let vm: Vm;

  before(async () => {
    await nubis.up();
    const created = await nubis.cli(['vm', 'create', 'elastic', '--image', 'tiny', '--memory', '256', '--max-memory', String(MAX_MB)]);
    assert.equal(created.code, 0, created.stderr);
    vm = await nubis.cliJson<Vm>(['vm', 'show', 'elastic']);
  });
  after(() => nubis.destroy());

  /** MemTotal in the guest, in MiB, from its /proc/meminfo on the serial console. */
  async function guestMemTotalMb(): Promise<number> {
    const output = await runOnConsole(nubis, 'elastic', 'grep MemTotal /proc/meminfo');
    const match = /MemTotal:\s+(\d+) kB/.exec(output);
    assert.ok(match, `MemTotal in ${JSON.stringify(output)}`);
    return Number(match[1]) / 1024;
  }

  /** QEMU's resident memory on the host, in MiB. */
  function residentMb(): number {
    const status = readFileSync(`/proc/${vm.pid}/status`, 'utf8');
    return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)![1]) / 1024;
  }

  /** Polls `read` until `ok` holds (the balloon moves as fast as the guest's driver gives pages), for at most `ms`. */
  async function until<T>(read: () => T | Promise<T>, ok: (value: T) => boolean, what: string, ms = 90_000): Promise<T> {
    const deadline = Date.now() + ms;
    let value = await read();
    while (!ok(value)) {
      if (Date.now() > deadline) assert.fail(`${what}: still ${JSON.stringify(value)} after ${ms} ms`);
      await delay(1000);
      value = await read();
    }
    return value;
  }

  it('starts ballooned below its maximum, and shows what the guest and the host see', async () => {
    assert.deepEqual([vm.memoryMb, vm.maxMemoryMb], [256, MAX_MB]);
    const total = await until(guestMemTotalMb, (mb) => mb <= 256, 'MemTotal at start');
    assert.ok(total > 150, `MemTotal ${total} MiB: the guest kept most of its 256 MiB`);
    // The statistics are polled every 5 s: they may still describe the guest before its balloon inflated.
    const shown = await until(
      () => nubis.cliJson<Vm>(['vm', 'show', 'elastic']),
      (v) => (v.memoryUsage?.guest.totalMb ?? Number.POSITIVE_INFINITY) <= 258,
      'balloon statistics after the balloon inflated',
    );
    const usage = shown.memoryUsage!;
    const totalNow = await guestMemTotalMb();
    assert.ok(Math.abs(usage.guest.totalMb! - totalNow) <= 2, `the balloon statistics say MemTotal ${usage.guest.totalMb}, the guest ${totalNow}`);
    assert.ok(usage.guest.freeMb! > 0 && usage.guest.usedMb! > 0 && usage.guest.availableMb! >= usage.guest.freeMb!);
    assert.equal(usage.balloonMb, 256);
    assert.ok(usage.host.residentMb! > 0);
    const text = await nubis.cli(['vm', 'show', 'elastic']);
    assert.match(text.stdout, /Memory:\s+256 MiB of 384 MiB maximum/);
    assert.match(text.stdout, /Guest memory:\s+used \d+, free \d+, cached \d+, available \d+, total \d+ MiB/);
    assert.match(text.stdout, /Host memory:\s+QEMU resident \d+ MiB/);
    const listed = await nubis.cliJson<Vm[]>(['vm', 'list']);
    assert.equal(listed.find((v) => v.name === 'elastic')?.memoryUsage, undefined, 'lists stay cheap');
  });

  it("changes the guest's MemTotal and QEMU's resident memory down and up, live", async () => {
    const up = await nubis.cli(['vm', 'set', 'elastic', '--memory', String(MAX_MB)]);
    assert.equal(up.code, 0, up.stderr);
    const full = await until(guestMemTotalMb, (mb) => mb > 300, 'MemTotal after --memory 384');
    // The guest touches 200 MiB (tmpfs), then frees it: QEMU holds those pages until given back.
    await runOnConsole(nubis, 'elastic', 'mkdir -p /mnt/fill && mount -t tmpfs -o size=300m tmpfs /mnt/fill && head -c 209715200 /dev/zero > /mnt/fill/a', {
      timeoutMs: 120_000,
    });
    const filled = residentMb();
    assert.ok(filled > 200, `QEMU resident ${filled} MiB with 200 MiB touched`);
    await runOnConsole(nubis, 'elastic', 'rm /mnt/fill/a');
    const down = await nubis.cli(['vm', 'set', 'elastic', '--memory', '128']);
    assert.equal(down.code, 0, down.stderr);
    assert.match(down.stdout, /memory 128 of 384 MiB/);
    const small = await until(guestMemTotalMb, (mb) => mb < full - 200, 'MemTotal after --memory 128');
    const shrunk = await until(residentMb, (mb) => mb < filled - 150, 'QEMU resident memory after --memory 128');
    console.log(`# MemTotal ${full.toFixed(0)} -> ${small.toFixed(0)} MiB; QEMU resident ${filled.toFixed(0)} -> ${shrunk.toFixed(0)} MiB`);
    // Back up: the guest can hold more than it could have at 128 MiB, and QEMU's memory grows with it.
    assert.equal((await nubis.cli(['vm', 'set', 'elastic', '--memory', String(MAX_MB)])).code, 0);
    await until(guestMemTotalMb, (mb) => mb > full - 8, 'MemTotal back at --memory 384');
    await runOnConsole(nubis, 'elastic', 'head -c 209715200 /dev/zero > /mnt/fill/b && echo filled-ok', { timeoutMs: 120_000 });
    const regrown = await until(residentMb, (mb) => mb > shrunk + 150, 'QEMU resident memory after refilling');
    console.log(`# back up: MemTotal ${full.toFixed(0)} MiB, QEMU resident ${regrown.toFixed(0)} MiB`);
    await runOnConsole(nubis, 'elastic', 'rm /mnt/fill/b');
  });

  it('refuses memory above the maximum or below the floor, changing nothing', async () => {
    const above = await nubis.cli(['vm', 'set', 'elastic', '--memory', '512']);
    assert.notEqual(above.code, 0);
    assert.match(above.stderr, /VM elastic can have from 64 to 384 MiB of memory \(its maximum\), not 512/);
    const bad = await nubis.cli(['vm', 'set', 'elastic', '--memory', '32']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /--memory takes MiB as a whole number of at least 64, not 32/);
    assert.equal((await nubis.cliJson<Vm>(['vm', 'show', 'elastic'])).memoryMb, MAX_MB);
  });

  it('takes a change while stopped at its next start', async () => {
    assert.equal((await nubis.cli(['vm', 'stop', 'elastic', '--force'])).code, 0);
    const changed = await nubis.cli(['vm', 'set', 'elastic', '--memory', '200']);
    assert.equal(changed.code, 0, changed.stderr);
    const started = await nubis.cli(['vm', 'start', 'elastic']);
    assert.equal(started.code, 0, started.stderr);
    vm = await nubis.cliJson<Vm>(['vm', 'show', 'elastic']);
    assert.equal(vm.memoryMb, 200);
    await until(guestMemTotalMb, (mb) => mb <= 200 && mb > 120, 'MemTotal after a start at --memory 200');
  });
});
