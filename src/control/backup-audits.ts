/**
 * What the tenant can check of the backup store without trusting it or reading its data back:
 *
 * - **Proofs of retrievability** (`nubis backup challenge [BACKUP]`): c random 4 KiB blocks of a
 *   backup's sealed chunks (460 by default: with 1% of the blocks lost or altered, a challenge
 *   catches it with probability 1 - 0.99^460 > 99%), each with a random coefficient; the store
 *   answers with one proof of 4,288 bytes whatever c is, computed from the blocks and the tags the
 *   client made when it sent them, and the control plane checks it with the project's proof key
 *   only (backup/proof/por.ts: Shacham and Waters, 2008). Each challenge is recorded
 *   (`backup_audits`), and the {@link BackupAuditor} challenges every backup again when its last
 *   challenge is older than the audit interval.
 * - **Search over encrypted catalogs** (`nubis backup search WORD`): each backup's catalog has its
 *   own key, so the control plane derives one token per backup (the k1 of Pi_bas); the store finds
 *   the matching encrypted entries without learning the word, and the control plane opens them
 *   (backup/search/sse-index.ts says what the store does learn).
 *
 * The chunks a challenge covers and their lengths come from the backup's sealed manifest (a
 * chunk's sealed length is its plaintext length and 28 bytes), never from the store's word.
 */
import type { BackupStoreClient } from '../backup/store-client.ts';
import { backupKeysOf, SEAL_OVERHEAD_BYTES } from '../backup/chunk-crypto.ts';
import { type ChunkRef, DEFAULT_CHALLENGE_BLOCKS, makeChallenge, ProofKey, verify } from '../backup/proof/por.ts';
import { challengeToJson, proofFromJson } from '../backup/proof/por-wire.ts';
import { openResults, searchToken } from '../backup/search/sse-index.ts';
import { messageOf } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import type { Logger } from '../core/logger.ts';
import { readBackupManifest } from '../backup/manifest.ts';
import type { Db } from '../state/database.ts';
import type { BackupAuditsTable, BackupsTable } from '../state/schema.ts';
import type { BackupAudit, BackupSearchHit } from '../wire/backup-schemas.ts';

type ProjectKey = (projectId: string) => Promise<Buffer>;

/** The chunks of backup `backupId` with their sealed lengths, as its manifest says. */
async function chunkRefsOf(store: BackupStoreClient, backupId: string, key: Buffer): Promise<ChunkRef[]> {
  const manifest = await readBackupManifest(store, backupId, key);
  const refs = new Map<string, ChunkRef>();
  for (const disk of manifest.disks) {
    for (const [index, id] of disk.chunks.entries()) {
      if (id === null) continue;
      const plaintext = Math.min(manifest.chunkBytes, disk.sizeBytes - index * manifest.chunkBytes);
      refs.set(id, { id, byteLength: plaintext + SEAL_OVERHEAD_BYTES });
    }
  }
  return [...refs.values()];
}

export function auditView(row: BackupAuditsTable): BackupAudit {
  return {
    backup: row.backup_id,
    at: row.at,
    blocks: row.blocks,
    passed: row.passed === 1,
    proofBytes: row.proof_bytes,
    storeMs: row.store_ms,
    verifyMs: row.verify_ms,
    ...(row.error ? { error: row.error } : {}),
  };
}

/** Challenges backups and records the outcomes; also on a timer (`start`). */
export class BackupAuditor {
  readonly #db: Db;
  readonly #store: BackupStoreClient;
  readonly #key: ProjectKey;
  readonly #intervalMs: number;
  readonly #logger?: Logger;
  #timer?: NodeJS.Timeout;
  #running?: Promise<void>;

  /** `intervalMs`: how old a backup's last challenge may get before the timer challenges it again (default a day). */
  constructor(deps: { db: Db; store: BackupStoreClient; key: ProjectKey; intervalMs?: number; logger?: Logger }) {
    this.#db = deps.db;
    this.#store = deps.store;
    this.#key = deps.key;
    this.#intervalMs = deps.intervalMs ?? 86_400_000;
    this.#logger = deps.logger;
  }

  /** Challenges backup `row` over `blocks` random blocks and records the outcome (a store that cannot answer fails it). */
  async challenge(row: BackupsTable, blocks = DEFAULT_CHALLENGE_BLOCKS): Promise<BackupAudit> {
    const key = await this.#key(row.project_id);
    const record: BackupAuditsTable = {
      id: newId('audit'),
      backup_id: row.id,
      at: new Date().toISOString(),
      blocks: 0,
      passed: 0,
      proof_bytes: 0,
      store_ms: 0,
      verify_ms: 0,
      error: null,
    };
    try {
      const challenge = makeChallenge(await chunkRefsOf(this.#store, row.id, key), blocks);
      const sent = Date.now();
      const answer = await this.#store.challenge(challengeToJson(challenge));
      record.store_ms = Date.now() - sent;
      record.proof_bytes = Buffer.from(answer.proof, 'base64').length;
      const checking = performance.now();
      const passed = verify(ProofKey.fromSecret(backupKeysOf(key).proofSecret), challenge, proofFromJson(answer));
      record.verify_ms = Math.ceil(performance.now() - checking);
      record.blocks = challenge.items.length;
      record.passed = passed ? 1 : 0;
    } catch (error) {
      record.error = messageOf(error).slice(0, 4096);
    }
    await this.#db.insertInto('backup_audits').values(record).execute();
    return auditView(record);
  }

  /** The challenges of backup `backupId`, oldest first. */
  async audits(backupId: string): Promise<BackupAudit[]> {
    const rows = await this.#db.selectFrom('backup_audits').selectAll().where('backup_id', '=', backupId).orderBy('at').orderBy('id').execute();
    return rows.map(auditView);
  }

  /** Challenges, now and then, every backup whose last challenge is older than the interval. */
  start(checkEveryMs = Math.min(this.#intervalMs, 600_000)): void {
    this.#timer = setInterval(() => {
      this.#running ??= this.#auditDue().finally(() => (this.#running = undefined));
    }, checkEveryMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#running;
  }

  async #auditDue(): Promise<void> {
    const before = new Date(Date.now() - this.#intervalMs).toISOString();
    const rows = await this.#db.selectFrom('backups').selectAll().orderBy('created_at').execute();
    for (const row of rows) {
      const last = await this.#db.selectFrom('backup_audits').select('at').where('backup_id', '=', row.id).orderBy('at', 'desc').executeTakeFirst();
      if (last && last.at > before) continue;
      const audit = await this.challenge(row).catch((error: unknown) => ({ passed: false, error: messageOf(error) }));
      if (!audit.passed) this.#logger?.warn({ backup: row.id, error: audit.error }, 'a backup failed its proof-of-retrievability challenge');
    }
  }
}

/**
 * The files whose names have `word` (a whole name or one of its tokens) in the catalogs of
 * `rows`: one token per backup goes to the store, which answers their encrypted entries.
 */
export async function searchCatalogs(store: BackupStoreClient, rows: BackupsTable[], key: Buffer, word: string): Promise<BackupSearchHit[]> {
  const keys = backupKeysOf(key);
  const queries = rows.map((row) => ({ backup: row.id, token: searchToken(keys.catalogKey(row.id), word).k1 }));
  if (queries.length === 0) return [];
  const byId = new Map(rows.map((row) => [row.id, row]));
  const hits: BackupSearchHit[] = [];
  for (const result of await store.search(queries)) {
    const row = byId.get(result.backup);
    if (!row) continue;
    const files = openResults(keys.catalogKey(row.id), word, result.values).map((entry) => {
      const [disk, path] = JSON.parse(entry) as [string, string];
      return { disk, path };
    });
    hits.push({ backup: row.id, vm: row.vm_name, createdAt: row.created_at, files });
  }
  return hits;
}
