/**
 * Upgrading a data folder: a database of the release before access control, with its one admin
 * token, migrates; the token then belongs to the user `admin`, who holds the platform role admin.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import SqliteDatabase from 'better-sqlite3';
import { Kysely, Migrator, SqliteDialect } from 'kysely';
import { authorize } from '../access/authorize.ts';
import { bootstrapAccess } from '../access/bootstrap.ts';
import { TokenStore } from '../access/tokens.ts';
import { openDatabase } from './database.ts';
import { inlineMigrations } from './migrations.ts';

describe('schema migration to access control', () => {
  const dir = mkdtempSync(join(tmpdir(), `nubis-migrate-${process.pid}-`));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("keeps the old admin token working, as the first platform admin's token", async () => {
    const path = join(dir, 'nubis.db');
    const old = new Kysely<unknown>({ dialect: new SqliteDialect({ database: new SqliteDatabase(path) }) });
    const { error } = await new Migrator({ db: old, provider: inlineMigrations }).migrateTo('0010-host-agent-token-hash');
    assert.equal(error, undefined);
    const secret = 'nubis_admin_from-an-older-release';
    await old
      .insertInto('tokens' as never)
      .values({
        id: 'tok-old',
        name: 'admin',
        secret_sha256: createHash('sha256').update(secret).digest('hex'),
        role: 'admin',
        created_at: '2026-11-01T00:00:00.000Z',
      } as never)
      .execute();
    await old.destroy();

    const db = await openDatabase(path);
    try {
      await bootstrapAccess(db, join(dir, 'admin-token-not-there'));
      const principal = await new TokenStore(db).authenticate(secret);
      assert.equal(principal.userName, 'admin');
      assert.equal(principal.tokenName, 'admin');
      assert.equal(authorize(principal, 'host.evacuate', 'platform').allowed, true);
      assert.equal(authorize(principal, 'vm.create', { project: { id: 'any', name: 'any' } }).allowed, true);
      assert.equal((await db.selectFrom('users').select('name').execute()).length, 1, 'no second admin is made');
    } finally {
      await db.destroy();
    }
  });
});
