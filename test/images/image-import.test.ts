/**
 * Image import against a hostile client: the real control plane services over a temporary data
 * folder (no hosts), driven through the API with inject(). Every refusal must be a 4xx, create no
 * image record and write nothing into the image store; valid imports must be stored with our own
 * file mode; a cancelled import must leave nothing. Needs qemu-img and mkfifo; boots no VM.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readdirSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { readTinyImage } from '../../src/images/build-tiny.ts';
import type { Operation } from '../../src/wire/schemas.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

/** Every file under `dir`, relative, with its mode. */
function listTree(dir: string, prefix = ''): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const rel = join(prefix, entry.name);
    found.push(rel);
    if (entry.isDirectory()) found.push(...listTree(join(dir, entry.name), rel));
  }
  return found.sort();
}

/** A file with the Linux x86 boot header ("HdrS" at 0x202). */
function craftedKernel(): Buffer {
  const kernel = Buffer.alloc(8192);
  kernel.write('HdrS', 0x202, 'latin1');
  return kernel;
}

describe('image import (API, no hosts)', () => {
  let cluster: FakeCluster;
  let dir: string;
  let app: FastifyInstance;
  let services: FakeCluster['services'];
  let importDir: string;
  let imagesDir: string;
  let auth: FakeCluster['auth'];
  const kernelBytes = (): Buffer => craftedKernel();

  before(async () => {
    cluster = await fakeCluster();
    ({ dir, services, auth } = cluster);
    await services.images.prepareFolders();
    importDir = services.images.importDir;
    imagesDir = join(dir, 'images');
    app = await cluster.app();
  });
  after(() => cluster?.close());

  async function post(body: Record<string, unknown>) {
    return app.inject({ method: 'POST', url: '/v1/images', headers: auth, payload: body });
  }

  async function imageRecords(): Promise<unknown[]> {
    return (await app.inject({ method: 'GET', url: '/v1/images', headers: auth })).json();
  }

  /** Asserts a refusal: a 4xx with the code, no image recorded, the store unchanged. */
  async function assertRefused(body: Record<string, unknown>, message: RegExp, code = 'IMAGE_INVALID') {
    const storeBefore = listTree(imagesDir);
    const recordsBefore = await imageRecords();
    const response = await post(body);
    assert.ok(response.statusCode >= 400 && response.statusCode < 500, `${JSON.stringify(body)} -> ${response.statusCode} ${response.body}`);
    assert.equal(response.json().code, code, response.body);
    assert.match(response.json().message, message);
    assert.deepEqual(await imageRecords(), recordsBefore);
    assert.deepEqual(listTree(imagesDir), storeBefore);
  }

  /** Starts an import and waits for its operation. */
  async function importAndWait(body: Record<string, unknown>): Promise<Operation> {
    const response = await post(body);
    assert.equal(response.statusCode, 202, response.body);
    return services.operations.wait((response.json() as { operation: Operation }).operation.id);
  }

  it('creates the import folder with mode 0700', () => {
    assert.equal(statSync(importDir).mode & 0o777, 0o700);
  });

  it('refuses files outside the import folder, by absolute path, by ../ and through /dev', async () => {
    writeFileSync(join(dir, 'outside.raw'), Buffer.alloc(65536, 1));
    await assertRefused({ name: 'shadow', path: '/etc/shadow' }, /\/etc\/shadow is outside the import folder/);
    await assertRefused({ name: 'outside', path: join(dir, 'outside.raw') }, /is outside the import folder/);
    await assertRefused({ name: 'dotdot', path: '../outside.raw' }, /body\.path/, 'VALIDATION_FAILED');
    await assertRefused({ name: 'zero', path: '/dev/zero' }, /\/dev\/zero is outside the import folder/);
    await assertRefused({ name: 'kernel-out', kernelPath: '/etc/passwd', initrdPath: '/etc/group' }, /kernel file \/etc\/passwd is outside/);
  });

  it('refuses a NUL or a control character in a name, and names that are too long', async () => {
    await assertRefused({ name: 'nul', path: 'a\u0000b' }, /body\.path/, 'VALIDATION_FAILED');
    await assertRefused({ name: 'newline', path: 'a\nb' }, /body\.path/, 'VALIDATION_FAILED');
    await assertRefused({ name: 'long', path: 'a'.repeat(1025) }, /body\.path/, 'VALIDATION_FAILED');
  });

  it('refuses symlinks, also through a linked folder, FIFOs, directories and empty names', async () => {
    symlinkSync('/etc/passwd', join(importDir, 'passwd.raw'));
    symlinkSync('/etc', join(importDir, 'etc-link'));
    mkdirSync(join(importDir, 'folder'));
    await assertRefused({ name: 'link', path: 'passwd.raw' }, /passwd\.raw is a symbolic link/);
    await assertRefused({ name: 'link-abs', path: join(importDir, 'passwd.raw') }, /is a symbolic link/);
    await assertRefused({ name: 'link-dir', path: 'etc-link/passwd' }, /etc-link\/passwd leads out of the import folder/);
    await assertRefused({ name: 'folder', path: 'folder' }, /folder is a directory/);
    await assertRefused({ name: 'itself', path: importDir }, /outside the import folder/);
  });

  it('answers a FIFO at once, and four FIFO imports do not hold up a valid one', async () => {
    execFileSync('mkfifo', [join(importDir, 'pipe.raw')]);
    const started = Date.now();
    await assertRefused({ name: 'fifo', path: 'pipe.raw' }, /pipe\.raw is a FIFO/);
    await assertRefused({ name: 'fifo-kernel', kernelPath: 'pipe.raw', initrdPath: 'pipe.raw' }, /kernel file pipe\.raw is a FIFO/);
    assert.ok(Date.now() - started < 5000, `the FIFO took ${Date.now() - started} ms`);

    const fifoImports = [1, 2, 3, 4].map((n) => post({ name: `fifo${n}`, path: 'pipe.raw' }));
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(importDir, 'after-fifo.qcow2'), '16M']);
    const validStarted = Date.now();
    const operation = await importAndWait({ name: 'after-fifo', path: 'after-fifo.qcow2' });
    assert.equal(operation.status, 'succeeded', JSON.stringify(operation));
    assert.ok(Date.now() - validStarted < 5000, `the valid import took ${Date.now() - validStarted} ms`);
    for (const response of await Promise.all(fifoImports)) assert.equal(response.statusCode, 400);
  });

  it('refuses a text file posing as a kernel and a raw file posing as an initrd, saying what they look like', async () => {
    writeFileSync(join(importDir, 'text-kernel'), 'this is not a kernel\n'.repeat(100));
    writeFileSync(join(importDir, 'good-kernel'), kernelBytes());
    writeFileSync(join(importDir, 'good-initrd'), Buffer.concat([Buffer.from([0x1f, 0x8b, 0x08, 0]), Buffer.alloc(100)]));
    writeFileSync(join(importDir, 'raw-initrd'), Buffer.alloc(4096, 0xab));
    await assertRefused(
      { name: 'textk', kernelPath: 'text-kernel', initrdPath: 'good-initrd' },
      /kernel file text-kernel is not a Linux x86 kernel .*looks like text/,
    );
    await assertRefused(
      { name: 'rawi', kernelPath: 'good-kernel', initrdPath: 'raw-initrd' },
      /initrd file raw-initrd is not a cpio archive .*looks like unrecognised data starting abab/,
    );
    await assertRefused({ name: 'both', path: 'good-kernel', kernelPath: 'good-kernel', initrdPath: 'good-initrd' }, /either/);
  });

  it('refuses a qcow2 with a backing file or an external data file', async () => {
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', join(importDir, 'base.raw'), '1M']);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', join(importDir, 'overlay.qcow2')]);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${join(importDir, 'data.raw')}`, join(importDir, 'external.qcow2'), '1M']);
    await assertRefused({ name: 'overlay', path: 'overlay.qcow2' }, /overlay\.qcow2 is a qcow2 image that has a backing file; flatten it first/);
    await assertRefused({ name: 'external', path: 'external.qcow2' }, /external\.qcow2 is a qcow2 image that has an external data file/);
  });

  it('imports a qcow2 and a raw disk, stored 0640 even from a 0666 source', async () => {
    const source = join(importDir, 'disk.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', source, '16M']);
    chmodSync(source, 0o666);
    const operation = await importAndWait({ name: 'disk1', path: source });
    assert.equal(operation.status, 'succeeded', JSON.stringify(operation));
    assert.deepEqual(listTree(join(imagesDir, 'disk1')), ['disk.qcow2']);
    assert.equal(statSync(join(imagesDir, 'disk1', 'disk.qcow2')).mode & 0o777 & ~0o640, 0);
    const image = (await app.inject({ method: 'GET', url: '/v1/images', headers: auth })).json().find((i: { name: string }) => i.name === 'disk1');
    assert.equal(image.format, 'qcow2');
    assert.equal(image.kind, 'disk');

    const raw = Buffer.alloc(3 * 1024 * 1024);
    raw.write('bytes in the middle', 1024 * 1024 + 5);
    writeFileSync(join(importDir, 'disk.raw'), raw, { mode: 0o666 });
    chmodSync(join(importDir, 'disk.raw'), 0o666);
    assert.equal((await importAndWait({ name: 'disk2', path: 'disk.raw' })).status, 'succeeded');
    const stored = join(imagesDir, 'disk2', 'disk.raw');
    assert.equal(statSync(stored).mode & 0o777 & ~0o640, 0);
    assert.ok(execFileSync('cmp', [stored, join(importDir, 'disk.raw')]).length === 0);
    await assertRefused({ name: 'disk2', path: 'disk.raw' }, /An image named disk2 exists/, 'IMAGE_NAME_TAKEN');
  });

  it('imports a kernel and initrd pair, stored 0640 even from 0666 sources', async () => {
    const tiny = readTinyImage(join(process.cwd(), '.cache')) ?? readTinyImage('/work/main/.cache');
    if (tiny) {
      copyFileSync(tiny.kernelPath, join(importDir, 'vmlinuz'));
      copyFileSync(tiny.initrdPath, join(importDir, 'initrd.img'));
    } else {
      writeFileSync(join(importDir, 'vmlinuz'), craftedKernel());
      writeFileSync(join(importDir, 'initrd.img'), Buffer.concat([Buffer.from([0x1f, 0x8b, 0x08, 0]), Buffer.alloc(100)]));
    }
    chmodSync(join(importDir, 'vmlinuz'), 0o666);
    chmodSync(join(importDir, 'initrd.img'), 0o666);
    const operation = await importAndWait({ name: 'kernel1', kernelPath: 'vmlinuz', initrdPath: join(importDir, 'initrd.img') });
    assert.equal(operation.status, 'succeeded', JSON.stringify(operation));
    assert.deepEqual(listTree(join(imagesDir, 'kernel1')), ['initrd.img', 'vmlinuz']);
    for (const file of ['initrd.img', 'vmlinuz']) {
      assert.equal(statSync(join(imagesDir, 'kernel1', file)).mode & 0o777 & ~0o640, 0);
      assert.ok(execFileSync('cmp', [join(imagesDir, 'kernel1', file), join(importDir, file)]).length === 0);
    }
  });

  it('cancels the copy of a large disk: cancelled, no record, no files left', async () => {
    const source = join(importDir, 'large.raw');
    writeFileSync(source, '');
    truncateSync(source, 2 * 1024 * 1024 * 1024);
    const storeBefore = listTree(imagesDir);
    const response = await post({ name: 'large', path: 'large.raw' });
    assert.equal(response.statusCode, 202, response.body);
    const { operation } = response.json() as { operation: Operation };
    const cancel = await app.inject({ method: 'POST', url: `/v1/operations/${operation.id}/cancel`, headers: auth });
    assert.equal(cancel.statusCode, 202, cancel.body);
    const final = await services.operations.wait(operation.id);
    assert.equal(final.status, 'cancelled', JSON.stringify(final));
    assert.equal(final.error?.code, 'OPERATION_CANCELLED');
    const names = (await app.inject({ method: 'GET', url: '/v1/images', headers: auth })).json().map((image: { name: string }) => image.name);
    assert.ok(!names.includes('large'));
    assert.deepEqual(listTree(imagesDir), storeBefore);
  });
});
