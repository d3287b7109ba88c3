// Pool members a client names through the storage node's management API: devices that hold
// data are refused (and left byte-for-byte as they were) unless forced; missing paths, FIFOs,
// character devices, directories, relative or `..` paths and unreachable NBD exports are the
// client's mistake (4xx, fast, nothing created), for pool create and for member replace alike.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { httpStatusOf } from '../../src/core/error-codes.ts';
import { encodeLabel } from '../../src/storage/pool/metadata-format.ts';
import { startStorageNode } from '../../src/storage/storage-node.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;

describe('storage node: pool member hardening', () => {
  let dir: string;
  let node: Awaited<ReturnType<typeof startStorageNode>>;
  let app: FastifyInstance;
  let counter = 0;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-device-hardening-'));
    node = await startStorageNode({ poolsDir: join(dir, 'pools'), nbdSocket: join(dir, 'nbd.sock'), manageSocket: join(dir, 'manage.sock') });
    app = node.app;
  });
  after(async () => {
    await node?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  async function blank(sizeMiB = 40): Promise<string> {
    const path = join(dir, `blank-${counter++}.img`);
    await writeFile(path, '');
    await truncate(path, sizeMiB * MiB);
    return path;
  }

  async function withBytes(writes: Array<[number, Buffer]>): Promise<string> {
    const path = await blank();
    const handle = await open(path, 'r+');
    try {
      for (const [offset, bytes] of writes) await handle.write(bytes, 0, bytes.length, offset);
    } finally {
      await handle.close();
    }
    return path;
  }

  async function ext4File(): Promise<string> {
    const path = await blank();
    try {
      await run('mkfs.ext4', ['-q', '-F', path]);
    } catch {
      // No e2fsprogs: the superblock magic and the extents feature are what the probe reads.
      const handle = await open(path, 'r+');
      await handle.write(Buffer.from([0x53, 0xef]), 0, 2, 1080);
      await handle.write(Buffer.from([0x40, 0, 0, 0]), 0, 4, 1024 + 0x60);
      await handle.close();
    }
    return path;
  }

  const sha256 = async (path: string) =>
    createHash('sha256')
      .update(await readFile(path))
      .digest('hex');
  const poolNames = async () => ((await app.inject({ method: 'GET', url: '/storage/pools' })).json() as Array<{ name: string }>).map((p) => p.name).sort();

  /** The answer to a request, failing the test if it takes 5 s (a FIFO opened would hang). */
  async function within5s(request: InjectOptions): Promise<LightMyRequestResponse> {
    const answer: Promise<LightMyRequestResponse> = app.inject(request);
    const timeout = delay(5000, 'timeout', { ref: false });
    const first = await Promise.race([answer, timeout]);
    assert.notEqual(first, 'timeout', `${JSON.stringify(request)} got no answer within 5 s`);
    return answer;
  }

  const createPool = (name: string, devices: string[], force?: boolean) =>
    within5s({ method: 'POST', url: '/storage/pools', payload: { name, layout: 'raid1', devices, allocationUnit: '256K', ...(force ? { force } : {}) } });

  it('refuses an ext4 file naming what it found, leaves it unchanged, and takes it with force', async () => {
    const [ext4, other] = [await ext4File(), await blank()];
    const before = await sha256(ext4);
    const refused = await createPool('p-ext4', [other, ext4]);
    assert.equal(refused.statusCode, 409);
    assert.equal(refused.json().code, 'POOL_DEVICE_HAS_DATA');
    assert.equal(refused.json().message, `Device ${ext4} holds an ext4 filesystem; pass --force to overwrite it`);
    assert.equal(await sha256(ext4), before, 'the filesystem is byte-for-byte intact');
    assert.ok(
      (await readFile(other)).subarray(0, 8192).every((b) => b === 0),
      'the blank member was not labelled either',
    );
    assert.deepEqual(await poolNames(), []);
    const forced = await createPool('p-ext4', [other, ext4], true);
    assert.equal(forced.statusCode, 201, forced.body);
    assert.notEqual(await sha256(ext4), before);
  });

  it('refuses a GPT-labelled file, and a member of another pool naming that pool', async () => {
    const gpt = await withBytes([
      [510, Buffer.from([0x55, 0xaa])],
      [446 + 4, Buffer.from([0xee])],
      [512, Buffer.from('EFI PART')],
    ]);
    const gptAnswer = await createPool('p-gpt', [gpt, await blank()]);
    assert.equal(gptAnswer.statusCode, 409);
    assert.match(gptAnswer.json().message, new RegExp(`^Device ${gpt} holds a GPT partition table; pass --force`));

    // A member of a pool this node does not serve (another node's, or one whose file was lost).
    const label = encodeLabel({
      poolUuid: 'elsewhere-uuid',
      poolName: 'elsewhere',
      memberIndex: 1,
      memberCount: 2,
      layout: 'raid1',
      chunkBytes: 65536,
      allocationUnitBytes: MiB,
      slotBytes: MiB,
      journalBytes: MiB,
      dataStartBytes: 4 * MiB,
      rows: 8,
      createdAt: new Date(0).toISOString(),
    });
    const foreign = await withBytes([[0, label]]);
    const foreignAnswer = await createPool('p-foreign', [foreign, await blank()]);
    assert.equal(foreignAnswer.statusCode, 409);
    assert.equal(foreignAnswer.json().code, 'POOL_DEVICE_IN_USE');
    assert.match(foreignAnswer.json().message, /already belongs to pool elsewhere .*; pass --force to overwrite it$/);

    // A member of a pool this node serves, reached through another name: refused even with force.
    const alias = join(dir, 'alias-of-member.img');
    const member = (await app.inject({ method: 'GET', url: '/storage/pools/p-ext4' })).json().members[0].path as string;
    await symlink(member, alias);
    const memberBefore = await sha256(member);
    const live = await createPool('p-live', [alias, await blank()], true);
    assert.equal(live.statusCode, 409);
    assert.equal(live.json().message, `Device ${alias} already belongs to pool p-ext4, which this node serves; take it out of that pool first`);
    assert.equal(await sha256(member), memberBefore);
    assert.deepEqual(await poolNames(), ['p-ext4']);
  });

  /** Devices the client got wrong, with the status and code each must give. */
  async function wrongDevices(): Promise<Array<[string, string, number, string]>> {
    const fifo = join(dir, `fifo-${counter++}`);
    await run('mkfifo', [fifo]);
    const folder = join(dir, `folder-${counter++}`);
    await mkdir(folder);
    const zeroLink = join(dir, `zero-link-${counter++}`);
    await symlink('/dev/zero', zeroLink);
    return [
      ['missing path', join(dir, 'no-such.img'), 422, 'POOL_DEVICE_MISSING'],
      ['FIFO', fifo, 422, 'POOL_DEVICE_UNSUITABLE'],
      ['/dev/zero', '/dev/zero', 422, 'POOL_DEVICE_UNSUITABLE'],
      ['symlink to /dev/zero', zeroLink, 422, 'POOL_DEVICE_UNSUITABLE'],
      ['directory', folder, 422, 'POOL_DEVICE_UNSUITABLE'],
      ['relative path', 'a.img', 400, 'POOL_DEVICE_INVALID'],
      ['.. path', `${dir}/../${dir.split('/').pop()}/x.img`, 400, 'POOL_DEVICE_INVALID'],
      ['control character', `${dir}/a\nb.img`, 400, 'POOL_DEVICE_INVALID'],
      ['unreachable nbd:// (TEST-NET address)', 'nbd://192.0.2.1:10809/disk', 422, 'POOL_DEVICE_UNREACHABLE'],
      ['nbd+unix:// without a server', `nbd+unix:///disk?socket=${dir}/none.sock`, 422, 'POOL_DEVICE_UNREACHABLE'],
    ];
  }

  it('answers 4xx within 5 s for devices the client got wrong, and creates nothing', async () => {
    const poolsBefore = await poolNames();
    for (const [what, device, status, code] of await wrongDevices()) {
      const answer = await createPool('p-wrong', [await blank(), device]);
      assert.equal(answer.statusCode, status, `${what}: ${answer.body}`);
      assert.equal(answer.json().code, code, what);
      assert.equal(httpStatusOf(code), status, `${what}: the API answers the same status`);
      assert.ok(
        answer.json().message.includes(device.includes('\n') ? JSON.stringify(device) : device),
        `${what}: the message names the device: ${answer.json().message}`,
      );
      assert.deepEqual(await poolNames(), poolsBefore, what);
    }
    const symlinked = await createPool('p-wrong', [await blank(), (await wrongDevices())[3]![1]]);
    assert.match(symlinked.json().message, /\(a symlink to \/dev\/zero\) is a character device/);
    for (const chunk of ['64K ', '1.5K', 'x'.repeat(100), '0x1000']) {
      const answer = await within5s({
        method: 'POST',
        url: '/storage/pools',
        payload: { name: 'p-chunk', layout: 'raid1', devices: [await blank(), await blank()], chunk },
      });
      assert.equal(answer.statusCode, 400, `chunk ${JSON.stringify(chunk)}: ${answer.body}`);
    }
    assert.deepEqual(await poolNames(), poolsBefore);
  });

  it('replace: refuses the same devices before its job starts, and takes data with force', async () => {
    const [a, b] = [await blank(), await blank()];
    assert.equal((await createPool('p-replace', [a, b])).statusCode, 201);
    const members = async () => (await app.inject({ method: 'GET', url: '/storage/pools/p-replace' })).json().members.map((m: { path: string }) => m.path);
    const replace = (device: string, force?: boolean) =>
      within5s({ method: 'POST', url: '/storage/pools/p-replace/replace', payload: { member: 0, device, ...(force ? { force } : {}) } });

    const ext4 = await ext4File();
    const before = await sha256(ext4);
    const refused = await replace(ext4);
    assert.equal(refused.statusCode, 409);
    assert.equal(refused.json().message, `Device ${ext4} holds an ext4 filesystem; pass --force to overwrite it`);
    assert.equal(await sha256(ext4), before);
    for (const [what, device, status, code] of await wrongDevices()) {
      const answer = await replace(device);
      assert.equal(answer.statusCode, status, `${what}: ${answer.body}`);
      assert.equal(answer.json().code, code, what);
    }
    assert.equal((await replace(b)).statusCode, 409, 'a member of this pool');
    assert.deepEqual(await members(), [a, b], 'no member changed');

    const started = await replace(ext4, true);
    assert.equal(started.statusCode, 202, started.body);
    let job = started.json();
    while (job.status === 'running') {
      await delay(100);
      job = (await app.inject({ method: 'GET', url: `/storage/jobs/${job.id}` })).json();
    }
    assert.equal(job.status, 'succeeded', JSON.stringify(job.error));
    assert.deepEqual(await members(), [ext4, b]);
  });
});
