/**
 * Opens the control plane's database: embedded SQLite under the data folder, migrated to the
 * current schema before anything reads it.
 */
import { chmodSync, existsSync } from 'node:fs';
import SqliteDatabase from 'better-sqlite3';
import { Kysely, Migrator, SqliteDialect } from 'kysely';
import { NubisError } from '../core/errors.ts';
import { inlineMigrations } from './migrations.ts';
import type { Database } from './schema.ts';

export type Db = Kysely<Database>;

/** Statements kept, by SQL text, at most (the least recently used go). */
const STATEMENTS_KEPT = 1000;

/**
 * Kysely prepares every query it sends, and parsing the same SQL again for each was about a
 * millisecond of every VM create (bench/scale): `prepare` hands back the statement made before
 * for the same text. Safe as Kysely uses it: one query at a time on the one connection, each run
 * to its end (`all` or `run`) before the next; SQLite prepares a kept statement again by itself
 * when the schema changed.
 *
 * Each writing statement is counted as a commit when it leaves no transaction open (a `commit`,
 * or a write outside a transaction): every commit waits for the disk, so their number per action
 * is what bounds the writes a second. SQL sees the count as `nubis_commits()` (the metrics do).
 */
function keepPreparedStatements(sqlite: SqliteDatabase.Database): void {
  const prepare = sqlite.prepare.bind(sqlite);
  const kept = new Map<string, SqliteDatabase.Statement>();
  let commits = 0;
  sqlite.function('nubis_commits', () => commits);
  sqlite.prepare = ((source: string) => {
    let statement = kept.get(source);
    if (statement) kept.delete(source);
    else {
      statement = prepare(source);
      if (statement.reader) buildRowsInJs(statement);
      if (!statement.reader && source !== 'rollback') {
        const run = statement.run.bind(statement);
        statement.run = ((...parameters: unknown[]) => {
          const result = run(...parameters);
          if (!sqlite.inTransaction) commits += 1;
          return result;
        }) as typeof statement.run;
      }
    }
    kept.set(source, statement);
    if (kept.size > STATEMENTS_KEPT) kept.delete(kept.keys().next().value!);
    return statement;
  }) as typeof sqlite.prepare;
}

/**
 * better-sqlite3 builds each row object property by property in C++: for a page of 1,000 VMs (22
 * columns each) that was half the cost of reading it. In raw mode it hands back arrays, which
 * become objects here through a function made for the statement's columns, an object literal with
 * those names as keys, so that all rows of a statement share one shape and V8 builds them fast.
 * The objects are the same as before (a name that appears twice keeps the last value). The
 * columns are read after every run, since SQLite prepares a kept statement again after a schema
 * change and `select *` may then have more.
 */
function buildRowsInJs(statement: SqliteDatabase.Statement): void {
  const all = statement.all.bind(statement);
  let shape: { names: string; make: (values: unknown[]) => unknown } | undefined;
  statement.all = ((...parameters: unknown[]) => {
    statement.raw(true);
    let rows: unknown[][];
    try {
      rows = all(...parameters) as unknown[][];
    } finally {
      statement.raw(false);
    }
    // Read after the run: a statement SQLite prepared again on the way names its new columns.
    const columns = statement.columns().map((column) => column.name);
    const names = columns.join('\0');
    if (shape?.names !== names) {
      // Keys are the statement's own column names (from our SQL), quoted as JSON string literals.
      const body = `return {${columns.map((name, index) => `${JSON.stringify(name)}: values[${index}]`).join(', ')}};`;
      shape = { names, make: new Function('values', body) as (values: unknown[]) => unknown };
    }
    return rows.map(shape.make);
  }) as typeof statement.all;
}

/** Opens (creating if needed) the SQLite database at `path` and applies pending migrations. */
export async function openDatabase(path: string): Promise<Db> {
  const sqlite = new SqliteDatabase(path);
  // WAL keeps readers off the writer's back; foreign keys are off by default in SQLite.
  sqlite.pragma('journal_mode = WAL');
  // FULL: a commit is on disk when it returns, also across a power loss (WAL's default, NORMAL,
  // may lose the last commits then). An acknowledged change, and the audit entry committed with
  // it, stays acknowledged.
  sqlite.pragma('synchronous = FULL');
  // The state holds hashes of every credential and each tenant's resources: readable by its
  // owner only, also when an older Nubis (or a umask) made the files readable by all.
  for (const file of [path, `${path}-wal`, `${path}-shm`]) if (existsSync(file)) chmodSync(file, 0o600);
  sqlite.pragma('foreign_keys = ON');
  sqlite.pragma('busy_timeout = 5000');
  keepPreparedStatements(sqlite);
  const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }) });
  // Branches number their migrations ahead and merge in any order (0017 may land before 0016): a
  // database that ran the later one still runs the earlier one when it arrives.
  const { error, results } = await new Migrator({ db, provider: inlineMigrations, allowUnorderedMigrations: true }).migrateToLatest();
  if (error) {
    await db.destroy();
    const failed = results?.find((result) => result.status === 'Error')?.migrationName ?? 'unknown';
    throw new NubisError('STATE_MIGRATION_FAILED', `Migration ${failed} of ${path} failed: ${(error as Error).message}`, { cause: error });
  }
  return db;
}
