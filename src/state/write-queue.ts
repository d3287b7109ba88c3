/**
 * Group commit: the write transactions that wait for the database together commit together.
 *
 * The database commits with `synchronous = FULL` (database.ts): every commit waits for the disk
 * (about 1.4 ms here), and better-sqlite3 waits synchronously, so nothing else of the control
 * plane runs meanwhile. A VM create makes several commits (its record, its operation's stages),
 * so commits, not CPU, bounded creates to about 80 a second (bench/scale). Here each write
 * transaction is a job of a queue: the jobs waiting when the connection comes free run one after
 * another in one SQLite transaction, each inside its own savepoint, and one commit makes them all
 * durable. A job that fails rolls back to its savepoint (its writes only) and rejects at once; the
 * others resolve once the commit is on disk, so a caller still learns of its change only when it
 * would survive a crash, and a crash leaves each job's writes whole or absent.
 *
 * Jobs run in the order they came, each seeing the writes of those before it, as consecutive
 * transactions would. A job runs in the async context of its caller (the request's audit entry).
 */
import { AsyncResource } from 'node:async_hooks';
import { sql, type Transaction } from 'kysely';
import type { Db } from './database.ts';
import type { Database } from './schema.ts';

/** Jobs in one commit at most: a batch holds the connection, so readers wait at most this many jobs. */
const JOBS_PER_COMMIT = 200;

/** One write transaction waiting for its turn. */
interface Job {
  work: (trx: Transaction<Database>) => Promise<unknown>;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

class WriteQueue {
  readonly #db: Db;
  readonly #waiting: Job[] = [];
  #running = false;

  constructor(db: Db) {
    this.#db = db;
  }

  run<T>(work: (trx: Transaction<Database>) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#waiting.push({ work: AsyncResource.bind(work), resolve: resolve as (value: unknown) => void, reject });
      if (!this.#running) {
        this.#running = true;
        setImmediate(() => void this.#drain());
      }
    });
  }

  /**
   * Commits batches until none waits. Each starts after the event loop's I/O callbacks of the
   * moment (setImmediate): better-sqlite3 commits synchronously, so a write started at once from
   * an I/O callback (an agent's answer, a request) would commit before the next callback could add
   * its own; a turn later, every callback the last commit held up has added its writes.
   */
  async #drain(): Promise<void> {
    try {
      while (this.#waiting.length > 0) {
        await this.#commitBatch();
        await new Promise((resolve) => setImmediate(resolve));
      }
    } finally {
      this.#running = false;
    }
  }

  /** Runs the jobs waiting once the connection is free (and those that come meanwhile) in one transaction. */
  async #commitBatch(): Promise<void> {
    const done: Array<{ job: Job; value: unknown }> = [];
    const taken: Job[] = [];
    try {
      await this.#db.transaction().execute(async (trx) => {
        // Taken inside the transaction: jobs that came while it waited for the connection join it.
        while (this.#waiting.length > 0 && taken.length < JOBS_PER_COMMIT) {
          const job = this.#waiting.shift()!;
          taken.push(job);
          await sql`savepoint job`.execute(trx);
          try {
            const value = await job.work(trx);
            await sql`release job`.execute(trx);
            done.push({ job, value });
          } catch (error) {
            // Its own writes undone; the transaction and the jobs before it go on.
            await sql`rollback to job`.execute(trx);
            await sql`release job`.execute(trx);
            job.reject(error);
          }
        }
      });
    } catch (error) {
      // Nothing of the batch committed (the commit itself, or a rollback, failed).
      for (const { job } of done) job.reject(error);
      // Taken but not run to its end (the transaction failed under it).
      for (const job of taken) if (!done.some((entry) => entry.job === job)) job.reject(error);
      // No transaction could begin (the database is closed): the waiting jobs fail with it, or
      // the queue would try again for ever.
      if (taken.length === 0) for (const job of this.#waiting.splice(0, JOBS_PER_COMMIT)) job.reject(error);
      return;
    }
    for (const { job, value } of done) job.resolve(value);
  }
}

const queues = new WeakMap<Db, WriteQueue>();

/**
 * Runs `work` as a write transaction of `db`, committed with the others waiting at the same time
 * (see above). Resolves with what `work` returned once its writes are on disk; rejects, with its
 * writes undone, when `work` throws or the commit fails. `work` writes through `trx` only.
 */
export function writeTransaction<T>(db: Db, work: (trx: Transaction<Database>) => Promise<T>): Promise<T> {
  let queue = queues.get(db);
  if (!queue) {
    queue = new WriteQueue(db);
    queues.set(db, queue);
  }
  return queue.run(work);
}
