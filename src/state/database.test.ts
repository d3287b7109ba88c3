/**
 * The database as the control plane opens it: statements are prepared once per SQL text and
 * reused (Kysely prepares every query it sends), a kept statement still sees the schema after it
 * changed, and rows (built from raw arrays) are the objects better-sqlite3 itself would build.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import SqliteDatabase from 'better-sqlite3';
import { sql } from 'kysely';
import { type Db, openDatabase } from './database.ts';

describe('database', () => {
  let dir: string;
  let db: Db;
  const prepared: string[] = [];
  const prepare = SqliteDatabase.prototype.prepare;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), `nubis-database-${process.pid}-`));
    SqliteDatabase.prototype.prepare = function (this: SqliteDatabase.Database, source: string) {
      prepared.push(source);
      return prepare.call(this, source);
    } as typeof prepare;
    db = await openDatabase(join(dir, 'nubis.db'));
  });
  after(async () => {
    SqliteDatabase.prototype.prepare = prepare;
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('prepares the same SQL once, however often it runs', async () => {
    prepared.length = 0;
    for (let index = 0; index < 5; index++) {
      await db
        .insertInto('projects')
        .values({ id: `prj-${index}`, name: `p${index}`, created_at: 'now', requirements: '{}' })
        .execute();
      assert.equal((await db.selectFrom('projects').select('name').where('id', '=', `prj-${index}`).executeTakeFirstOrThrow()).name, `p${index}`);
    }
    assert.equal(prepared.length, 2, prepared.join('\n'));
  });

  it('answers a kept statement with the schema as it is now', async () => {
    const read = () => db.selectFrom('projects').selectAll().where('id', '=', 'prj-0').executeTakeFirstOrThrow();
    assert.equal('note' in (await read()), false);
    await sql`ALTER TABLE projects ADD COLUMN note TEXT DEFAULT 'added'`.execute(db);
    assert.equal(((await read()) as unknown as { note?: string }).note, 'added', 'the kept statement was prepared again for the new column');
  });

  it('builds every row as better-sqlite3 would: names, values, types, a repeated name, RETURNING', async () => {
    const plain = new SqliteDatabase(join(dir, 'nubis.db'), { readonly: true });
    try {
      for (const query of [
        'SELECT * FROM projects ORDER BY id',
        "SELECT p.id, p.name, q.name, 1.5 AS ratio, NULL AS missing, x'00ff' AS bytes, 'it''s \"quoted\"' AS [odd name] FROM projects p JOIN projects q ON q.id = p.id ORDER BY p.id",
        'SELECT count(*) FROM projects',
      ]) {
        const ours = (await sql.raw(query).execute(db)).rows;
        assert.deepEqual(ours, plain.prepare(query).all(), query);
        assert.ok(ours.length > 0);
      }
    } finally {
      plain.close();
    }
    const returned = await db
      .insertInto('projects')
      .values({ id: 'prj-r', name: 'r', created_at: 'now', requirements: '{}' })
      .returning(['id', 'name'])
      .execute();
    assert.deepEqual(returned, [{ id: 'prj-r', name: 'r' }]);
  });
});
