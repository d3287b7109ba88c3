import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { closeDataFolder, closeHostFolder } from './data-folder.ts';

const modeOf = (path: string) => (statSync(path).mode & 0o777).toString(8);

describe('closeDataFolder', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'nubis-data-folder-'));
  after(() => rmSync(dataDir, { recursive: true, force: true }));

  it('lets others pass only on the ways VMs need, and closes everything else whatever its mode', async () => {
    for (const folder of ['hosts/host-1/vms/vm-a', 'images', 'storage/pools', 'storage/hosts/host-1', 'storage/hosts/.bind', 'logs'])
      mkdirSync(join(dataDir, folder), { recursive: true, mode: 0o755 });
    for (const file of ['nubis.db', 'nubis.db-wal', 'api.json', 'images/base.qcow2', 'hosts/host-1/identity.json', 'storage/hosts/fencing.json'])
      writeFileSync(join(dataDir, file), 'x', { mode: 0o644 });
    await closeDataFolder(dataDir);
    await closeHostFolder(join(dataDir, 'hosts', 'host-1'));
    assert.equal(modeOf(dataDir), '711');
    assert.equal(modeOf(join(dataDir, 'hosts')), '751', 'passable, not listable, by others');
    assert.equal(modeOf(join(dataDir, 'storage')), '751');
    assert.equal(modeOf(join(dataDir, 'storage', 'hosts')), '751', 'on the way to the VM sockets');
    assert.equal(modeOf(join(dataDir, 'storage', 'hosts', 'host-1')), '751');
    assert.equal(modeOf(join(dataDir, 'storage', 'pools')), '750');
    assert.equal(modeOf(join(dataDir, 'storage', 'hosts', '.bind')), '750');
    assert.equal(modeOf(join(dataDir, 'storage', 'hosts', 'fencing.json')), '640');
    assert.equal(modeOf(join(dataDir, 'hosts', 'host-1')), '751');
    assert.equal(modeOf(join(dataDir, 'hosts', 'host-1', 'vms')), '751');
    for (const closed of ['nubis.db', 'nubis.db-wal', 'api.json', 'hosts/host-1/identity.json']) assert.equal(modeOf(join(dataDir, closed)), '640', closed);
    assert.equal(modeOf(join(dataDir, 'logs')), '750');
    assert.equal(modeOf(join(dataDir, 'images')), '755', 'base images stay readable');
    assert.equal(modeOf(join(dataDir, 'images', 'base.qcow2')), '644');
  });
});
