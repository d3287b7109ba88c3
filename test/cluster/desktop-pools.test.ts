/**
 * A floating desktop pool for real: `nubis up` with one host, a storage-node pool with a small
 * base volume, a pool of 2 tiny desktops (128 MiB) with 1 spare. Alice connects, writes a marker
 * onto her desktop's disk through its serial console and leaves; Bob connects, gets the same VM
 * (reset meanwhile to a fresh clone of the base) and does not find Alice's marker on its disk.
 */
import assert from 'node:assert/strict';
import { truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { DesktopAssignment, DesktopPool } from '../../src/wire/desktop-schemas.ts';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';

describe('desktop pools on a real Nubis', () => {
  const nubis = new NubisInstance('desktops');
  const tokens = new Map<string, string>();

  before(async () => {
    await nubis.up();
    const device = join(nubis.dataDir, 'desktop-member.img');
    writeFileSync(device, '');
    truncateSync(device, 256 * 2 ** 20);
    await nubis.cliJson(['pool', 'create', 'p1', '--layout', 'raid0', '--device', device]);
    await nubis.cliJson(['volume', 'create', 'base', '--pool', 'p1', '--size', '16M']);
    for (const user of ['alice', 'bob']) {
      const password = `${user}-desktop-password-1`;
      const created = await nubis.cli(['user', 'create', user, '--password-stdin'], { input: `${password}\n` });
      assert.equal(created.code, 0, created.stderr);
      const login = await nubis.api<{ secret: string }>('POST', '/v1/auth/login', { user, password }, null);
      assert.equal(login.status, 200);
      tokens.set(user, login.body.secret);
    }
  });
  after(() => nubis.destroy());

  /** The CLI as `user` (a user with no role, only access to the pool). */
  async function asUser<T>(user: string, args: string[]): Promise<T> {
    const result = await nubis.cli([...args, '--json'], { env: { NUBIS_TOKEN: tokens.get(user)! } });
    assert.equal(result.code, 0, `${user}: nubis ${args.join(' ')}: ${result.stderr}`);
    return JSON.parse(result.stdout) as T;
  }

  async function showPool(): Promise<DesktopPool> {
    return nubis.cliJson<DesktopPool>(['desktop', 'pool', 'show', 'office']);
  }

  /** The first 10 bytes of the desktop's disk, as its guest reads them (printable, else dots). */
  async function diskStart(vm: string): Promise<string> {
    const output = await runOnConsole(nubis, vm, "echo 3 > /proc/sys/vm/drop_caches; echo disk=[$(head -c 10 /dev/vda | tr -c 'a-z0-9-' '.')]", {
      timeoutMs: 120_000,
    });
    const match = /disk=\[([^\]]*)\]/.exec(output.slice(output.lastIndexOf('disk=[')));
    assert.ok(match, `no disk line in ${JSON.stringify(output.slice(-300))}`);
    return match[1]!;
  }

  it("gives a later user a clean desktop: Alice's marker is gone after she leaves, also on the same VM", { timeout: 900_000 }, async () => {
    const created = await nubis.cliJson<DesktopPool>([
      'desktop',
      'pool',
      'create',
      'office',
      '--image',
      'tiny',
      '--base',
      'p1/base',
      '--size',
      '2',
      '--spare',
      '1',
      '--mode',
      'floating',
      '--memory',
      '128',
    ]);
    assert.deepEqual(
      created.desktops.map((d) => [d.vm, d.state]),
      [['office-1', 'running']],
    );
    for (const user of ['alice', 'bob']) await nubis.cliJson(['desktop', 'pool', 'grant', 'office', user]);

    const refused = await nubis.cli(['desktop', 'connect', 'office'], { env: { NUBIS_TOKEN: 'nubis_nobody' } });
    assert.notEqual(refused.code, 0);

    const alices = await asUser<DesktopAssignment & { url: string }>('alice', ['desktop', 'connect', 'office']);
    assert.equal(alices.desktop.vm, 'office-1', 'the booted spare');
    assert.equal(alices.url, `${nubis.url}/desktops/office`);
    // Written by the guest onto its disk: the marker is built by the shell, so the typed line never holds it.
    await runOnConsole(nubis, alices.desktop.vm, "printf 'alice-%s-x' $((40+2)) > /dev/vda; sync", { timeoutMs: 120_000 });
    assert.equal(await diskStart(alices.desktop.vm), 'alice-42-x', 'the marker is on her disk');

    const left = await asUser<{ desktop: string; operation?: { id: string } }>('alice', ['desktop', 'leave', 'office']);
    assert.equal(left.desktop, 'office-1');
    assert.ok(left.operation, 'a reset started');
    const reset = await nubis.waitOperation(left.operation.id);
    assert.equal(reset.status, 'succeeded', JSON.stringify(reset.error));

    const bobs = await asUser<DesktopAssignment>('bob', ['desktop', 'connect', 'office']);
    assert.equal(bobs.desktop.vm, alices.desktop.vm, 'the same VM, reset');
    assert.equal(bobs.desktop.state, 'running');
    const seen = await diskStart(bobs.desktop.vm);
    assert.notEqual(seen, 'alice-42-x');
    assert.equal(seen, '..........', 'the base is blank: the fresh clone is too');

    const pool = await showPool();
    assert.deepEqual(
      pool.desktops.map((d) => [d.vm, d.assignedTo ?? '-']),
      [
        ['office-1', 'bob'],
        ['office-2', '-'],
      ],
    );
    const audit = await nubis.cliJson<Array<{ action: string; user?: string }>>(['audit', 'list']);
    for (const action of ['desktop.assign', 'desktop.connect', 'desktop.leave', 'desktop.reset'])
      assert.ok(
        audit.some((entry) => entry.action === action),
        `${action} is in the audit log`,
      );

    await nubis.cliJson(['desktop', 'pool', 'delete', 'office', '--force']);
    assert.deepEqual(await nubis.cliJson(['desktop', 'pool', 'list']), []);
    const volumes = await nubis.cliJson<Array<{ name: string }>>(['volume', 'list', '--pool', 'p1']);
    assert.deepEqual(
      volumes.map((v) => v.name),
      ['base'],
    );
  });
});
