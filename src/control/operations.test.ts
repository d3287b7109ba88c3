/**
 * Operation events: each is recorded with the stage it brings in one transaction (one commit: a
 * create reports five), so whoever hears an event reads the operation as that event left it, and
 * the last one with the operation's outcome.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Db, openDatabase } from '../state/database.ts';
import { OperationManager } from './operations.ts';
import type { Operation } from '../wire/schemas.ts';

describe('operations', () => {
  let dir: string;
  let db: Db;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), `nubis-operations-${process.pid}-`));
    db = await openDatabase(join(dir, 'nubis.db'));
  });
  after(async () => {
    await db.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('records each event with its stage, and the last with the outcome, so that a listener reads them together', async () => {
    const operations = new OperationManager(db);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const operation = await operations.start('test.work', { type: 'test', id: 't1', name: 't1' }, async (op) => {
      await held;
      await op.report('halfway', 'Half done', 0.5);
      return { answer: 42 };
    });
    const seen: Array<Promise<Pick<Operation, 'stage' | 'status' | 'progress'>>> = [];
    operations.subscribe(operation.id, (update) => {
      // Read at once, in the listener: before anything else of the operation can be written.
      if (update.event) seen.push(operations.get(operation.id).then(({ stage, status, progress }) => ({ stage, status, progress })));
    });
    release();
    await operations.wait(operation.id);
    assert.deepEqual(await Promise.all(seen), [
      { stage: 'halfway', status: 'running', progress: 0.5 },
      { stage: 'done', status: 'succeeded', progress: 1 },
    ]);
    assert.deepEqual((await operations.get(operation.id)).result, { answer: 42 });
  });
});
