/**
 * Group commit: write transactions that wait together commit together (fewer commits, each of
 * which waits for the disk), each still whole or absent, each in its caller's async context.
 */
import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { sql } from 'kysely';
import { type Db, openDatabase } from './database.ts';
import { writeTransaction } from './write-queue.ts';

describe('write queue', () => {
  let dir: string;
  let db: Db;
  const commits = async () => Number((await sql<{ value: number }>`select nubis_commits() as value`.execute(db)).rows[0].value);
  const project = (id: string) => ({ id, name: id, created_at: 'now', requirements: '{}' });
  const names = async () => (await db.selectFrom('projects').select('id').where('id', 'like', 'wq-%').orderBy('id').execute()).map((row) => row.id);

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), `nubis-write-queue-${process.pid}-`));
    db = await openDatabase(join(dir, 'nubis.db'));
  });
  after(async () => {
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('counts a commit per transaction and per write outside one', async () => {
    const before = await commits();
    await db.insertInto('projects').values(project('wq-alone')).execute();
    await db.transaction().execute(async (trx) => {
      await trx.insertInto('projects').values(project('wq-t1')).execute();
      await trx.insertInto('projects').values(project('wq-t2')).execute();
    });
    assert.equal((await commits()) - before, 2);
    await db.deleteFrom('projects').where('id', 'like', 'wq-%').execute();
  });

  it('commits transactions that wait together with one commit, all of them durable', async () => {
    const before = await commits();
    const ids = Array.from({ length: 50 }, (_, index) => `wq-${String(index).padStart(2, '0')}`);
    const results = await Promise.all(
      ids.map((id) =>
        writeTransaction(db, async (trx) => {
          await trx.insertInto('projects').values(project(id)).execute();
          return id;
        }),
      ),
    );
    assert.deepEqual(results, ids);
    assert.deepEqual(await names(), ids);
    // The first runs alone (nothing waited yet); the 49 that came meanwhile commit together.
    assert.ok((await commits()) - before <= 2, `${(await commits()) - before} commits for 50 transactions`);
    await db.deleteFrom('projects').where('id', 'like', 'wq-%').execute();
  });

  it('undoes a failed transaction only, and rejects it with its own error', async () => {
    const outcomes = await Promise.allSettled([
      writeTransaction(db, (trx) => trx.insertInto('projects').values(project('wq-a')).execute()),
      writeTransaction(db, async (trx) => {
        await trx.insertInto('projects').values(project('wq-b')).execute();
        throw new Error('refused after its write');
      }),
      // The same name as wq-a: SQLite refuses it, and only it.
      writeTransaction(db, (trx) =>
        trx
          .insertInto('projects')
          .values({ ...project('wq-c'), name: 'wq-a' })
          .execute(),
      ),
      writeTransaction(db, (trx) => trx.insertInto('projects').values(project('wq-d')).execute()),
    ]);
    assert.deepEqual(
      outcomes.map((outcome) => outcome.status),
      ['fulfilled', 'rejected', 'rejected', 'fulfilled'],
    );
    assert.match(String((outcomes[1] as PromiseRejectedResult).reason), /refused after its write/);
    assert.match(String((outcomes[2] as PromiseRejectedResult).reason), /UNIQUE/);
    assert.deepEqual(await names(), ['wq-a', 'wq-d']);
    await db.deleteFrom('projects').where('id', 'like', 'wq-%').execute();
  });

  it('fails the transactions still waiting when the database is closed, instead of trying again for ever', async () => {
    const closing = await openDatabase(join(dir, 'closing.db'));
    await closing.destroy();
    const waiting = Array.from({ length: 3 }, (_, index) =>
      writeTransaction(closing, async (trx) => {
        await trx
          .insertInto('projects')
          .values(project(`wq-closed-${index}`))
          .execute();
      }),
    );
    for (const result of await Promise.allSettled(waiting)) assert.equal(result.status, 'rejected');
  });

  it("runs each transaction in its caller's async context", async () => {
    const context = new AsyncLocalStorage<string>();
    const seen = await Promise.all(['one', 'two', 'three'].map((name) => context.run(name, () => writeTransaction(db, async () => context.getStore()))));
    assert.deepEqual(seen, ['one', 'two', 'three']);
  });
});
