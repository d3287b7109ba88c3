/**
 * Long actions as operations: each has an id, a status, a stage and progress, a stream of events
 * (kept in the database, so a client that connects late replays them), a result or an error,
 * and can be cancelled through its AbortSignal.
 */
import { EventEmitter } from 'node:events';
import { toWireError } from '../core/error-codes.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import type { Operation, OperationEvent } from '../wire/schemas.ts';
import type { Db } from '../state/database.ts';
import { writeTransaction } from '../state/write-queue.ts';
import { annotateAudit, auditedTransaction } from '../audit/audit-context.ts';
import type { Database, OperationsTable } from '../state/schema.ts';
import type { Transaction } from 'kysely';
import { publishChange } from '../events/change-feed.ts';

/** What an operation's work gets: a way to report progress and the signal that cancels it. */
export interface OperationContext {
  readonly id: string;
  readonly signal: AbortSignal;
  /** Records a stage change or a progress step as an event. `progress` is 0..1. */
  report(stage: string, message: string, progress: number, data?: unknown): Promise<void>;
}

export interface OperationTarget {
  type: string;
  id: string;
  name: string;
  projectId?: string;
}

function toOperation(row: OperationsTable): Operation {
  return {
    id: row.id,
    kind: row.kind,
    status: row.status,
    stage: row.stage,
    progress: row.progress,
    target: { type: row.target_type, id: row.target_id, name: row.target_name },
    ...(row.error_code ? { error: { code: row.error_code, message: row.error_message ?? '' } } : {}),
    ...(row.result ? { result: JSON.parse(row.result) } : {}),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

export class OperationManager {
  readonly #db: Db;
  readonly #live = new EventEmitter();
  readonly #controllers = new Map<string, AbortController>();
  readonly #running = new Map<string, Promise<void>>();

  constructor(db: Db) {
    this.#db = db;
    this.#live.setMaxListeners(0);
  }

  /** Operations left `running` by a control plane that died cannot finish: mark them failed. */
  async failInterrupted(): Promise<void> {
    await this.#db
      .updateTable('operations')
      .set({
        status: 'failed',
        error_code: 'OPERATION_INTERRUPTED',
        error_message: 'The control plane stopped while this operation ran',
        updated_at: new Date().toISOString(),
      })
      .where('status', '=', 'running')
      .execute();
  }

  /**
   * The operations of `kind` that a control plane restart interrupted and that have not been
   * settled with the hosts' truth yet.
   */
  async interrupted(kind: string): Promise<OperationsTable[]> {
    return this.#db
      .selectFrom('operations')
      .selectAll()
      .where('kind', '=', kind)
      .where('error_code', '=', 'OPERATION_INTERRUPTED')
      .where('stage', '!=', 'reconciled')
      .execute();
  }

  /**
   * Settles an interrupted operation once the hosts have told what really happened: finished
   * (the work was done before the restart) or failed with what was undone.
   */
  async settleInterrupted(
    id: string,
    outcome: { status: 'succeeded'; message: string; result: unknown } | { status: 'failed'; message: string },
  ): Promise<void> {
    const at = new Date().toISOString();
    await this.#db
      .updateTable('operations')
      .set(
        outcome.status === 'succeeded'
          ? { status: 'succeeded', error_code: null, error_message: null, result: JSON.stringify(outcome.result), updated_at: at }
          : { status: 'failed', error_message: outcome.message, updated_at: at },
      )
      .where('id', '=', id)
      .execute();
    // The stage last: whoever sees `reconciled` sees the settled status with it.
    await this.#addEvent(id, 'reconciled', outcome.message, 1);
  }

  /**
   * `start` with `work` run under `claim` (a VM owner's claim, taken by the caller before its
   * checks, so that they hold until the work runs); the claim learns its operation, and a failure
   * to start gives it back.
   */
  async startClaimed<T>(
    claim: { run<R>(work: () => Promise<R>): Promise<R>; setOperation(id: string): void; release(): void },
    kind: string,
    target: OperationTarget,
    work: (context: OperationContext) => Promise<T>,
    record?: { within: (trx: Transaction<Database>) => Promise<void>; committed: () => void },
  ): Promise<Operation> {
    try {
      const operation = await this.start(kind, target, (op) => claim.run(() => work(op)), record);
      claim.setOperation(operation.id);
      return operation;
    } catch (error) {
      claim.release();
      throw error;
    }
  }

  /**
   * Records a new operation and runs `work` in the background. Returns the operation at once,
   * so the API can answer `202` with its id. `record.within` writes, in the transaction that records
   * the operation, what it acts on (a VM create its VM): both commit together, or neither, and
   * the request's audit entry names the operation; `record.committed` runs once they committed, before
   * the work starts (to publish what it recorded before the work changes it).
   */
  async start<T>(
    kind: string,
    target: OperationTarget,
    work: (context: OperationContext) => Promise<T>,
    record?: { within: (trx: Transaction<Database>) => Promise<void>; committed: () => void },
  ): Promise<Operation> {
    const now = new Date().toISOString();
    const row: OperationsTable = {
      id: newId('op'),
      kind,
      project_id: target.projectId ?? null,
      target_type: target.type,
      target_id: target.id,
      target_name: target.name,
      status: 'running',
      stage: 'queued',
      progress: 0,
      error_code: null,
      error_message: null,
      result: null,
      created_at: now,
      updated_at: now,
    };
    annotateAudit({ operation: row.id });
    await auditedTransaction(this.#db, async (trx) => {
      await record?.within(trx);
      await trx.insertInto('operations').values(row).execute();
    });
    record?.committed();
    publishChange(this.#db, 'operation', 'created', row.id);
    const controller = new AbortController();
    this.#controllers.set(row.id, controller);
    const context: OperationContext = {
      id: row.id,
      signal: controller.signal,
      report: (stage, message, progress, data) => this.#addEvent(row.id, stage, message, progress, data),
    };
    const run = (async () => {
      try {
        const result = await work(context);
        await this.#finish(row.id, 'succeeded', { result });
      } catch (error) {
        const cancelled = controller.signal.aborted;
        const wire = toWireError(error);
        await this.#finish(row.id, cancelled ? 'cancelled' : 'failed', {
          code: cancelled ? 'OPERATION_CANCELLED' : wire.body.code,
          message: cancelled ? messageOf(error) : wire.body.message,
        });
      } finally {
        this.#controllers.delete(row.id);
        this.#running.delete(row.id);
      }
    })();
    this.#running.set(row.id, run);
    return toOperation(row);
  }

  async get(id: string): Promise<Operation> {
    const row = await this.#db.selectFrom('operations').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw new NubisError('OPERATION_NOT_FOUND', `No operation ${id}; list operations with nubis operation list`);
    return toOperation(row);
  }

  /**
   * The operations of `ids` that exist, each with the project it acts in (null: the platform's),
   * in two queries whatever their number (the change feed builds a burst's events with it).
   */
  async getMany(ids: readonly string[]): Promise<Map<string, { operation: Operation; project: { id: string; name: string } | null }>> {
    const found = new Map<string, { operation: Operation; project: { id: string; name: string } | null }>();
    if (ids.length === 0) return found;
    const rows = await this.#db.selectFrom('operations').selectAll().where('id', 'in', ids).execute();
    const projectIds = [...new Set(rows.flatMap((row) => (row.project_id ? [row.project_id] : [])))];
    const projects = projectIds.length === 0 ? [] : await this.#db.selectFrom('projects').select(['id', 'name']).where('id', 'in', projectIds).execute();
    const names = new Map(projects.map((project) => [project.id, project.name]));
    for (const row of rows) {
      const project = row.project_id ? { id: row.project_id, name: names.get(row.project_id) ?? row.project_id } : null;
      found.set(row.id, { operation: toOperation(row), project });
    }
    return found;
  }

  /** The project an operation acts in (id and name), or null for one on the platform (pools, hosts, images). */
  async projectOf(id: string): Promise<{ id: string; name: string } | null> {
    const row = await this.#db
      .selectFrom('operations')
      .leftJoin('projects', 'projects.id', 'operations.project_id')
      .select(['operations.project_id', 'projects.name'])
      .where('operations.id', '=', id)
      .executeTakeFirst();
    if (!row) throw new NubisError('OPERATION_NOT_FOUND', `No operation ${id}; list operations with nubis operation list`);
    return row.project_id ? { id: row.project_id, name: row.name ?? row.project_id } : null;
  }

  /** Recent operations, newest first; `projectIds` limits them to those projects' (platform operations need `all`). */
  async list(options: { limit?: number; status?: string; projectIds?: 'all' | string[] } = {}): Promise<Operation[]> {
    let query = this.#db
      .selectFrom('operations')
      .selectAll()
      .orderBy('created_at', 'desc')
      .limit(options.limit ?? 50);
    if (options.status) query = query.where('status', '=', options.status as OperationsTable['status']);
    if (options.projectIds && options.projectIds !== 'all') {
      if (options.projectIds.length === 0) return [];
      query = query.where('project_id', 'in', options.projectIds);
    }
    return (await query.execute()).map(toOperation);
  }

  /** Asks a running operation to stop; its work sees the abort signal and rolls back. */
  async cancel(id: string): Promise<Operation> {
    const operation = await this.get(id);
    const controller = this.#controllers.get(id);
    if (operation.status !== 'running' || !controller) {
      throw new NubisError('OPERATION_FINISHED', `Operation ${id} already ended (${operation.status}); nothing to cancel`);
    }
    controller.abort(new NubisError('OPERATION_CANCELLED', `Operation ${id} was cancelled`));
    return operation;
  }

  /** Resolves when the operation has ended, with its final record. */
  async wait(id: string): Promise<Operation> {
    await this.#running.get(id);
    return this.get(id);
  }

  /** Events recorded so far with a sequence number above `afterSeq`. */
  async events(id: string, afterSeq = 0): Promise<OperationEvent[]> {
    const rows = await this.#db.selectFrom('operation_events').selectAll().where('operation_id', '=', id).where('seq', '>', afterSeq).orderBy('seq').execute();
    return rows.map((row) => ({
      seq: row.seq,
      at: row.at,
      stage: row.stage,
      message: row.message,
      progress: row.progress,
      ...(row.data ? { data: JSON.parse(row.data) } : {}),
    }));
  }

  /**
   * Calls `listener` for every event of `id` from now on and with the final operation when it
   * ends. Returns the function that unsubscribes.
   */
  subscribe(id: string, listener: (update: { event?: OperationEvent; finished?: Operation }) => void): () => void {
    this.#live.on(id, listener);
    return () => this.#live.off(id, listener);
  }

  /** Waits for every running operation (used at shutdown and in tests). */
  async drain(): Promise<void> {
    await Promise.all(this.#running.values());
  }

  /**
   * Records an event and the operation's new stage and progress (and, ending it, its outcome) in
   * one transaction: one commit, not two (a commit waits for the disk, and a create reports five
   * events), and no reader sees the event without the stage it brought.
   */
  async #addEvent(id: string, stage: string, message: string, progress: number, data?: unknown, outcome?: Partial<OperationsTable>): Promise<void> {
    const at = new Date().toISOString();
    const clamped = Math.max(0, Math.min(1, progress));
    const seq = await writeTransaction(this.#db, async (trx) => {
      const inserted = await trx
        .insertInto('operation_events')
        .values({ operation_id: id, at, stage, message, progress: clamped, data: data === undefined ? null : JSON.stringify(data) })
        .returning('seq')
        .executeTakeFirstOrThrow();
      await trx
        .updateTable('operations')
        .set({ stage, progress: clamped, updated_at: at, ...outcome })
        .where('id', '=', id)
        .execute();
      return inserted.seq;
    });
    publishChange(this.#db, 'operation', 'updated', id);
    this.#live.emit(id, { event: { seq, at, stage, message, progress: clamped, ...(data === undefined ? {} : { data }) } });
  }

  async #finish(id: string, status: 'succeeded' | 'failed' | 'cancelled', outcome: { result?: unknown; code?: string; message?: string }): Promise<void> {
    const stage = status === 'succeeded' ? 'done' : status;
    await this.#addEvent(
      id,
      stage,
      status === 'succeeded' ? 'Done' : (outcome.message ?? status),
      status === 'succeeded' ? 1 : (await this.get(id)).progress,
      undefined,
      {
        status,
        error_code: outcome.code ?? null,
        error_message: outcome.message ?? null,
        result: outcome.result === undefined ? null : JSON.stringify(outcome.result),
      },
    );
    this.#live.emit(id, { finished: await this.get(id) });
  }
}
