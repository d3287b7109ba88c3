/**
 * The audit entry a request will leave, carried through the request's async work. The first
 * database transaction that changes something for the request writes the entry inside itself
 * (auditedTransaction), so the change and its record commit together or not at all; a request
 * that changes nothing in the database (a denial, a failure, a call to the storage node) has its
 * entry written when it ends.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Transaction } from 'kysely';
import type { Db } from '../state/database.ts';
import { writeTransaction } from '../state/write-queue.ts';
import type { Database } from '../state/schema.ts';
import { appendAuditEntry, type AuditEntryInput } from './audit-store.ts';

/** A request's pending entry; `written` flips once, whoever writes it first. */
export interface PendingAudit {
  entry: AuditEntryInput | undefined;
  written: boolean;
}

const storage = new AsyncLocalStorage<PendingAudit>();
/** Requests running with a context; the storage is switched off when none does. */
let running = 0;

/**
 * Runs `fn` (the handling of a request that changes something) with `pending` as its audit
 * context; call the returned function when the request has ended. On Node 20 an enabled
 * AsyncLocalStorage makes every promise of the process pay a hook (bench/access measured a read
 * route at 72% of its throughput), so the storage is on only while such a request runs: reads
 * need no context (their denials are written from the request itself).
 */
export function runWithAudit(pending: PendingAudit, fn: () => void): () => void {
  running += 1;
  let ended = false;
  storage.run(pending, fn);
  return () => {
    if (ended) return;
    ended = true;
    running -= 1;
    // Work a request left running (an operation) loses the context: its entry was written already.
    if (running === 0) storage.disable();
  };
}

/** Adds facts to the running request's entry while it is still pending (e.g. the operation it started). */
export function annotateAudit(fields: Pick<AuditEntryInput, 'operation'>): void {
  const pending = storage.getStore();
  if (pending?.entry && !pending.written) Object.assign(pending.entry, fields);
}

/** The user of the running mutating request, if any (who placed a VM, for its placement record). */
export function currentUser(): string | undefined {
  return storage.getStore()?.entry?.user;
}

/** Takes the pending entry of the running request, once: a second caller gets nothing. */
function takePending(): AuditEntryInput | undefined {
  const pending = storage.getStore();
  if (!pending?.entry || pending.written) return undefined;
  pending.written = true;
  return pending.entry;
}

/**
 * A database transaction that also records the running request's audit entry (result `ok`)
 * before it commits: the change and its entry are one atomic write.
 */
export async function auditedTransaction<T>(db: Db, fn: (trx: Transaction<Database>) => Promise<T>): Promise<T> {
  return writeTransaction(db, async (trx) => {
    const result = await fn(trx);
    const entry = takePending();
    if (entry) await appendAuditEntry(trx, { ...entry, result: 'ok' });
    return result;
  });
}

/** Writes the pending entry of `pending` with its outcome, unless a transaction already did. */
export async function finishAudit(db: Db, pending: PendingAudit, outcome: Pick<AuditEntryInput, 'result' | 'status' | 'code' | 'reason'>): Promise<void> {
  if (!pending.entry || pending.written) return;
  pending.written = true;
  const entry = { ...pending.entry, ...outcome };
  await writeTransaction(db, (trx) => appendAuditEntry(trx, entry));
}
