/**
 * The audit log's rows: each entry is one leaf of a Merkle tree (RFC 9162 2.1.1). The leaf input
 * is the entry's canonical JSON, which holds its own sequence number, so an entry moved to
 * another place no longer matches its place.
 */
import type { Transaction } from 'kysely';
import type { Db } from '../state/database.ts';
import type { Database } from '../state/schema.ts';
import { leafHash } from './merkle.ts';

/** What an entry records: who, what, on what, and how it ended. Never a secret. */
export interface AuditEntryInput {
  /** The user, or absent when the request had no valid credential. */
  user?: string;
  /** The token's name (never its secret). */
  token?: string;
  /** The project acted in (id and name), or absent for the platform. */
  projectId?: string;
  project?: string;
  /** The permission checked, or the route's operation id where none applies. */
  action: string;
  method: string;
  route: string;
  /** The path parameters: which resource. */
  resource?: Record<string, string>;
  /** The request body and query, secrets replaced. */
  params?: Record<string, unknown>;
  /** The operation the request started, if any. */
  operation?: string;
  result: 'ok' | 'denied' | 'failed';
  status?: number;
  code?: string;
  /** Why it was denied. */
  reason?: string;
}

export interface AuditEntry extends AuditEntryInput {
  seq: number;
  at: string;
}

/** JSON with object keys sorted at every level: one byte string per entry, whoever serialises it. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

const SECRET_FIELD = /pass(word)?|secret|token|ticket|totp|code|key|credential/i;

/** A copy of a request's body or query with every secret-looking field replaced, and long strings cut. */
export function redactSecrets(value: unknown, depth = 0): unknown {
  if (depth > 6) return '[deep]';
  if (Array.isArray(value)) return value.slice(0, 32).map((item) => redactSecrets(item, depth + 1));
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(value as Record<string, unknown>).slice(0, 64))
      out[key] = SECRET_FIELD.test(key) ? '[redacted]' : redactSecrets(item, depth + 1);
    return out;
  }
  if (typeof value === 'string' && value.length > 512) return `${value.slice(0, 512)}...`;
  return value;
}

/**
 * Appends an entry inside `trx`: the next sequence number (the one writer is SQLite's write
 * transaction), its canonical JSON and leaf hash.
 */
export async function appendAuditEntry(trx: Transaction<Database>, input: AuditEntryInput): Promise<AuditEntry> {
  const last = await trx
    .selectFrom('audit_entries')
    .select((eb) => eb.fn.max('seq').as('seq'))
    .executeTakeFirst();
  const entry: AuditEntry = { ...input, seq: Number(last?.seq ?? 0) + 1, at: new Date().toISOString() };
  const data = canonicalJson(entry);
  await trx
    .insertInto('audit_entries')
    .values({
      seq: entry.seq,
      data,
      leaf_hash: leafHash(data).toString('hex'),
      at: entry.at,
      user_name: entry.user ?? null,
      project_id: entry.projectId ?? null,
    })
    .execute();
  return entry;
}

/** Entries, newest first, filtered by user, project and time. */
export async function listAuditEntries(
  db: Db,
  filter: { user?: string; projectIds?: 'all' | string[]; since?: string; limit?: number },
): Promise<AuditEntry[]> {
  let query = db
    .selectFrom('audit_entries')
    .select('data')
    .orderBy('seq', 'desc')
    .limit(filter.limit ?? 100);
  if (filter.user) query = query.where('user_name', '=', filter.user);
  if (filter.since) query = query.where('at', '>=', filter.since);
  if (filter.projectIds !== undefined && filter.projectIds !== 'all') {
    if (filter.projectIds.length === 0) return [];
    query = query.where('project_id', 'in', filter.projectIds);
  }
  return (await query.execute()).map((row) => JSON.parse(row.data) as AuditEntry);
}
