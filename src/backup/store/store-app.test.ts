import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { ChunkStore } from './chunk-store.ts';
import { buildStoreApp } from './store-app.ts';

const idOf = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

describe('backup store API', () => {
  let dir = '';
  let app: FastifyInstance;
  const chunkA = randomBytes(5000);
  const chunkB = randomBytes(7000);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-store-'));
    const store = new ChunkStore(dir);
    await store.open();
    app = buildStoreApp(store);
  });
  after(async () => {
    await app.close();
    await rm(dir, { recursive: true, force: true });
  });

  const put = (id: string, bytes: Buffer) =>
    app.inject({ method: 'PUT', url: `/chunks/${id}`, headers: { 'content-type': 'application/octet-stream' }, payload: bytes });
  const commit = (id: string, chunks: string[]) =>
    app.inject({
      method: 'PUT',
      url: `/backups/${id}`,
      payload: { createdAt: new Date().toISOString(), chunks, manifest: Buffer.from('sealed').toString('base64') },
    });

  it('keeps chunks by id, tells which are missing, and returns them byte for byte', async () => {
    const missing = await app.inject({ method: 'POST', url: '/chunks/missing', payload: { ids: [idOf(chunkA), idOf(chunkB)] } });
    assert.deepEqual(missing.json(), { missing: [idOf(chunkA), idOf(chunkB)] });
    assert.deepEqual((await put(idOf(chunkA), chunkA)).json(), { stored: true });
    assert.deepEqual((await put(idOf(chunkA), chunkA)).json(), { stored: false });
    const again = await app.inject({ method: 'POST', url: '/chunks/missing', payload: { ids: [idOf(chunkA), idOf(chunkB)] } });
    assert.deepEqual(again.json(), { missing: [idOf(chunkB)] });
    const got = await app.inject({ method: 'GET', url: `/chunks/${idOf(chunkA)}` });
    assert.deepEqual(got.rawPayload, chunkA);
  });

  it('commits a backup only when it has every chunk, so an interrupted backup is never listed', async () => {
    const refused = await commit('bak-000000000001', [idOf(chunkA), idOf(chunkB)]);
    assert.equal(refused.statusCode, 422);
    assert.equal(refused.json().code, 'BACKUP_CHUNK_MISSING');
    assert.deepEqual((await app.inject({ method: 'GET', url: '/backups' })).json(), { backups: [] });
    await put(idOf(chunkB), chunkB);
    assert.equal((await commit('bak-000000000001', [idOf(chunkA), idOf(chunkB)])).statusCode, 200);
    assert.equal((await commit('bak-000000000001', [idOf(chunkA)])).json().code, 'BACKUP_EXISTS');
    const listed = (await app.inject({ method: 'GET', url: '/backups' })).json() as { backups: Array<{ id: string; storedBytes: number }> };
    assert.deepEqual(
      listed.backups.map((b) => b.id),
      ['bak-000000000001'],
    );
    assert.equal(listed.backups[0].storedBytes, chunkA.length + chunkB.length + 'sealed'.length);
  });

  it('finds rotten and lost chunks by itself, without a key', async () => {
    assert.deepEqual((await app.inject({ method: 'POST', url: '/check', payload: { backup: 'bak-000000000001' } })).json(), {
      checkedChunks: 2,
      missing: [],
      corrupt: [],
    });
    const rotten = Buffer.from(chunkA);
    rotten[10] ^= 0xff;
    await writeFile(join(dir, 'chunks', idOf(chunkA).slice(0, 2), idOf(chunkA)), rotten);
    await rm(join(dir, 'chunks', idOf(chunkB).slice(0, 2), idOf(chunkB)));
    assert.deepEqual((await app.inject({ method: 'POST', url: '/check', payload: { backup: 'bak-000000000001' } })).json(), {
      checkedChunks: 2,
      missing: [idOf(chunkB)],
      corrupt: [idOf(chunkA)],
    });
    await writeFile(join(dir, 'chunks', idOf(chunkA).slice(0, 2), idOf(chunkA)), chunkA);
  });

  it('collects only chunks no backup names and not touched within the grace period', async () => {
    const loose = randomBytes(100);
    await put(idOf(loose), loose);
    assert.equal((await app.inject({ method: 'POST', url: '/collect', payload: { graceSeconds: 3600 } })).json().removedChunks, 0, 'a fresh chunk stays');
    const old = new Date(Date.now() - 7200_000);
    await utimes(join(dir, 'chunks', idOf(loose).slice(0, 2), idOf(loose)), old, old);
    await utimes(join(dir, 'chunks', idOf(chunkA).slice(0, 2), idOf(chunkA)), old, old);
    const collected = (await app.inject({ method: 'POST', url: '/collect', payload: { graceSeconds: 3600 } })).json();
    assert.equal(collected.removedChunks, 1, 'only the loose chunk: chunk A is named by a backup');
    assert.equal((await app.inject({ method: 'DELETE', url: '/backups/bak-000000000001' })).statusCode, 204);
    await utimes(join(dir, 'chunks', idOf(chunkA).slice(0, 2), idOf(chunkA)), old, old);
    assert.equal((await app.inject({ method: 'POST', url: '/collect', payload: { graceSeconds: 3600 } })).json().removedChunks, 1);
    assert.equal((await app.inject({ method: 'GET', url: `/chunks/${idOf(chunkA)}` })).json().code, 'BACKUP_CHUNK_MISSING');
    assert.deepEqual(await readdir(join(dir, 'tmp')), [], 'nothing half-written is left');
  });

  it('refuses bad ids, bodies and sizes with a reason', async () => {
    for (const url of ['/chunks/..%2f..%2fetc', '/chunks/ABC', `/chunks/${'0'.repeat(63)}`]) {
      const answer = await app.inject({ method: 'GET', url });
      assert.equal(answer.statusCode, 400, url);
    }
    assert.equal((await app.inject({ method: 'DELETE', url: '/backups/../x' })).statusCode, 404);
    assert.equal((await app.inject({ method: 'DELETE', url: '/backups/bak-zzz' })).statusCode, 400);
    assert.equal((await put(idOf(chunkA), Buffer.alloc(5 * 1024 * 1024))).statusCode, 413);
    const badManifest = await app.inject({ method: 'PUT', url: '/backups/bak-000000000002', payload: { createdAt: 'x', chunks: [], manifest: '***' } });
    assert.equal(badManifest.statusCode, 400);
  });
});
