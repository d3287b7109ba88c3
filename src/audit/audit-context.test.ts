/**
 * An audit entry commits with the change it records: both or neither. And a request's entry is
 * written once, by the first transaction of the request, whoever else writes after it.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openDatabase, type Db } from '../state/database.ts';
import { auditedTransaction, finishAudit, type PendingAudit, runWithAudit } from './audit-context.ts';

describe('audited transactions', () => {
  const dir = mkdtempSync(join(tmpdir(), `nubis-audit-context-${process.pid}-`));
  let db: Db;
  before(async () => {
    db = await openDatabase(join(dir, 'nubis.db'));
  });
  after(async () => {
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  const pending = (): PendingAudit => ({
    entry: { user: 'alice', action: 'project.create', method: 'POST', route: '/v1/projects', result: 'ok' },
    written: false,
  });
  /** Runs `fn` as the handling of a request with audit context `audit`. */
  const asRequest = (audit: PendingAudit, fn: () => Promise<void>): Promise<void> =>
    new Promise((resolve, reject) => {
      const end = runWithAudit(
        audit,
        () =>
          void fn()
            .then(resolve, reject)
            .finally(() => end()),
      );
    });
  const count = async (table: 'projects' | 'audit_entries') =>
    (
      await db
        .selectFrom(table)
        .select((eb) => eb.fn.countAll<number>().as('n'))
        .executeTakeFirstOrThrow()
    ).n;

  it('writes neither the change nor its entry when the transaction fails', async () => {
    const audit = pending();
    await assert.rejects(
      asRequest(audit, () =>
        auditedTransaction(db, async (trx) => {
          await trx.insertInto('projects').values({ id: 'prj-x', name: 'x', created_at: new Date().toISOString(), requirements: '{}' }).execute();
          throw new Error('the change fails after its first write');
        }),
      ),
      /the change fails/,
    );
    assert.deepEqual([await count('projects'), await count('audit_entries')], [0, 0]);
  });

  it('writes both in one commit, and the entry once, also when the request writes again', async () => {
    const audit = pending();
    await asRequest(audit, async () => {
      await auditedTransaction(db, (trx) =>
        trx.insertInto('projects').values({ id: 'prj-y', name: 'y', created_at: new Date().toISOString(), requirements: '{}' }).execute(),
      );
      await auditedTransaction(db, (trx) => trx.updateTable('projects').set({ name: 'y2' }).where('id', '=', 'prj-y').execute());
    });
    await finishAudit(db, audit, { result: 'ok', status: 201 });
    assert.deepEqual([await count('projects'), await count('audit_entries')], [1, 1]);
    const entry = JSON.parse((await db.selectFrom('audit_entries').select('data').executeTakeFirstOrThrow()).data) as { user: string; result: string };
    assert.deepEqual([entry.user, entry.result], ['alice', 'ok']);
  });

  it('writes nothing for work outside a request', async () => {
    await auditedTransaction(db, (trx) =>
      trx.insertInto('projects').values({ id: 'prj-z', name: 'z', created_at: new Date().toISOString(), requirements: '{}' }).execute(),
    );
    assert.equal(await count('audit_entries'), 1);
  });
});
