/**
 * Encrypted volumes through the CLI and the API of a whole Nubis (`nubis up`): made, listed,
 * shown, the KEK shown and rotated, refused on a dir pool. Then a real VM on an encrypted volume
 * of the storage node: the guest writes checksummed blocks and a text marker to its disk (QEMU's
 * NBD client, our NBD server, the engine's encryption), the VM is stopped and started, and the
 * guest reads both back intact; the member device files never hold the marker. `nubis key rotate`
 * rewraps the key while the VM runs, and the guest still reads its data; the volume is deleted.
 */
import assert from 'node:assert/strict';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { NubisInstance, freePort, httpGet, runOnConsole } from '../helpers/nubis-instance.ts';

const MARKER = 'NUBIS-GUEST-MARKER-c0ffee';

describe('a VM on an encrypted storage-node volume', () => {
  const nubis = new NubisInstance('crypt-vm');
  const devices: string[] = [];

  before(async () => {
    await nubis.up();
    for (const index of [0, 1]) {
      const path = join(nubis.dataDir, `member-${index}.img`);
      writeFileSync(path, '');
      truncateSync(path, 128 * 2 ** 20);
      devices.push(path);
    }
  });
  after(() => nubis.destroy());

  async function guestDisk(port: number, op: 'write' | 'verify', seed: number): Promise<{ ok: boolean }> {
    const body = await httpGet(`http://127.0.0.1:${port}/cgi-bin/disk?op=${op}&dev=vda&mb=16&seed=${seed}`, 60_000);
    return JSON.parse(body ?? '{}') as { ok: boolean };
  }

  it('makes, lists, shows and rotates encrypted volumes through the CLI, and refuses them on dir pools', async () => {
    await nubis.cliJson(['pool', 'create', 'cp1', '--layout', 'raid1', ...devices.flatMap((d) => ['--device', d])]);
    const volume = await nubis.cliJson<{ encrypted: boolean }>(['volume', 'create', 'secret', '--pool', 'cp1', '--size', '64M', '--encrypted']);
    assert.equal(volume.encrypted, true);
    assert.equal((await nubis.cliJson<{ encrypted: boolean }>(['volume', 'create', 'open', '--pool', 'cp1', '--size', '8M'])).encrypted, false);
    const listed = await nubis.cliJson<Array<{ name: string; encrypted: boolean }>>(['volume', 'list', '--pool', 'cp1']);
    assert.deepEqual(
      listed.map((v) => [v.name, v.encrypted]),
      [
        ['open', false],
        ['secret', true],
      ],
    );
    assert.match((await nubis.cli(['volume', 'show', 'cp1/secret'])).stdout, /encrypted:\s+true/);
    assert.match((await nubis.cli(['volume', 'list', '--pool', 'cp1'])).stdout, /ENCRYPTED/);
    const shown = await nubis.cliJson<{ currentKekId: string; encryptedVolumes: number; location: string }>(['key', 'show']);
    assert.equal(shown.encryptedVolumes, 1);
    assert.equal(shown.location, join(nubis.dataDir, 'storage', 'keys', 'kek.json'));
    const rotated = await nubis.cliJson<{ kekId: string; rewrappedKeys: number; destroyedKekIds: string[] }>(['key', 'rotate']);
    assert.equal(rotated.rewrappedKeys, 1);
    assert.deepEqual(rotated.destroyedKekIds, [shown.currentKekId]);
    const operations = await nubis.cliJson<Array<{ kind: string; status: string }>>(['operation', 'list']);
    assert.equal(operations.find((o) => o.kind === 'key.rotate')?.status, 'succeeded', 'the rotation ran as an operation');

    await nubis.cliJson(['pool', 'create', 'local', '--kind', 'dir']);
    const refused = await nubis.cli(['volume', 'create', 'x', '--pool', 'local', '--size', '8M', '--encrypted']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /local is a dir pool: encrypted volumes are made on storage-node pools/);
    await nubis.cliJson(['pool', 'delete', 'local']);
    await nubis.cliJson(['volume', 'delete', 'cp1/open']);
  });

  it('keeps what the guest wrote across a restart and a key rotation, and no plaintext on the members', async () => {
    const port = await freePort();
    await nubis.cliJson(['vm', 'create', 'cvm', '--image', 'tiny', '--memory', '128', '--disk', 'cp1/secret', '--publish', `${port}:80`]);
    assert.equal((await guestDisk(port, 'write', 11)).ok, true, 'the guest wrote its blocks');
    await runOnConsole(nubis, 'cvm', `printf '${MARKER}' | dd of=/dev/vda bs=4096 seek=8192 conv=fsync 2>/dev/null; sync`);

    await nubis.cliJson(['vm', 'stop', 'cvm']);
    await nubis.cliJson(['vm', 'start', 'cvm']);
    assert.equal((await guestDisk(port, 'verify', 11)).ok, true, 'the blocks read back after a restart');
    assert.match(await runOnConsole(nubis, 'cvm', 'dd if=/dev/vda bs=4096 skip=8192 count=1 2>/dev/null | head -c 25; echo'), new RegExp(MARKER));

    const rotate = await nubis.cli(['key', 'rotate', '--json']);
    assert.equal(rotate.code, 0, rotate.stderr);
    assert.equal((JSON.parse(rotate.stdout) as { rewrappedKeys: number }).rewrappedKeys, 1);
    assert.equal((await guestDisk(port, 'verify', 11)).ok, true, 'the running guest reads its data after the rotation');

    for (const device of devices) assert.ok(!readFileSync(device).includes(Buffer.from(MARKER)), `no plaintext marker on ${device}`);
    await nubis.cliJson(['vm', 'delete', 'cvm']);
    await nubis.cliJson(['volume', 'delete', 'cp1/secret']);
    const keys = await nubis.cliJson<{ encryptedVolumes: number; retiredKekIds: string[] }>(['key', 'show']);
    assert.equal(keys.encryptedVolumes, 0);
    assert.deepEqual(keys.retiredKekIds, []);
    await nubis.cliJson(['pool', 'delete', 'cp1']);
  });
});
