/**
 * A real VM on an encrypted volume of the storage node: the guest writes checksummed blocks and a
 * text marker to its disk (QEMU's NBD client, our NBD server, the engine's encryption), the VM is
 * stopped and started, and the guest reads both back intact; the member device files never hold
 * the marker. Then `nubis key rotate` rewraps the key while the VM runs, and the guest still reads
 * its data; the volume is deleted and its key destroyed.
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

  it('keeps what the guest wrote across a restart and a key rotation, and no plaintext on the members', async () => {
    await nubis.cliJson(['pool', 'create', 'cp1', '--layout', 'raid1', ...devices.flatMap((d) => ['--device', d])]);
    const volume = await nubis.cliJson<{ encrypted: boolean }>(['volume', 'create', 'secret', '--pool', 'cp1', '--size', '64M', '--encrypted']);
    assert.equal(volume.encrypted, true);
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
