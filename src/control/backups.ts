/**
 * Backups of VMs in the control plane: `nubis backup create VM`, `list`, `show`, `verify`,
 * `delete`, `restore BACKUP --as NAME`, and the store's garbage collection.
 *
 * Who does what: the VM's host agent copies the disks and seals and sends the chunks
 * (host/vm-backup.ts); the backup store, a process of its own, keeps them
 * (backup/store/store-app.ts) and never sees a key; the control plane keeps each project's
 * backup key wrapped by its own key-encryption key (a key file of mode 0600, behind the same
 * KeyProvider interface as the storage node's), hands it to an agent for one call at a time, and
 * records what each backup holds and cost (`backups`). A backup is listed here only once the
 * store has committed it, so an interrupted one never appears.
 *
 * A backup runs under the VM's owner like a snapshot (`snapshot` claim: queued with lifecycle and
 * disk actions, refused during a migration), so its disks are the ones the agent copies.
 */
import { randomBytes } from 'node:crypto';
import { NubisError, messageOf } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import type { TakenBackup } from '../agent-api/contract.ts';
import { backupKeysOf, openChunk } from '../backup/chunk-crypto.ts';
import type { BackupStoreClient } from '../backup/store-client.ts';
import type { KeyProvider } from '../storage/keys/key-provider.ts';
import type { Db } from '../state/database.ts';
import type { BackupsTable, VmsTable } from '../state/schema.ts';
import type { Backup, BackupAudit, BackupSearchHit, BackupSettings, BackupVerification, RestoredFile } from '../wire/backup-schemas.ts';
import { BackupAuditor, searchCatalogs } from './backup-audits.ts';
import type { Operation } from '../wire/schemas.ts';
import type { HostRegistry } from './hosts.ts';
import type { OperationManager } from './operations.ts';
import type { VmOwner } from './vm-owner.ts';
import type { VmService } from './vms.ts';
import type { StorageCatalogue } from './storage.ts';
import { projectIdByName } from './projects.ts';
import { refuseTemplate } from './vm-template-rules.ts';
import { restoreBackup } from './backup-restore.ts';
import { restoreFile } from './backup-file-restore.ts';
import { networkNamesOf } from './vm-view.ts';

/** Reading and sending a disk of a few GiB under TCG takes minutes. */
const BACKUP_CALL_TIMEOUT_MS = 3_600_000;

export class BackupService {
  readonly #db: Db;
  readonly #hosts: HostRegistry;
  readonly #owner: VmOwner;
  readonly #operations: OperationManager;
  readonly #vms: VmService;
  readonly #storage: StorageCatalogue;
  readonly #store: BackupStoreClient;
  readonly #keys: KeyProvider;
  /** Proofs of retrievability of the backups, on request and on a timer. */
  readonly auditor: BackupAuditor;

  constructor(deps: {
    db: Db;
    hosts: HostRegistry;
    owner: VmOwner;
    operations: OperationManager;
    vms: VmService;
    storage: StorageCatalogue;
    store: BackupStoreClient;
    keys: KeyProvider;
    /** How old a backup's last proof of retrievability may get before it is challenged again. */
    auditIntervalMs?: number;
  }) {
    this.#db = deps.db;
    this.#hosts = deps.hosts;
    this.#owner = deps.owner;
    this.#operations = deps.operations;
    this.#vms = deps.vms;
    this.#storage = deps.storage;
    this.#store = deps.store;
    this.#keys = deps.keys;
    this.auditor = new BackupAuditor({
      db: deps.db,
      store: deps.store,
      key: (projectId) => this.#projectKey(projectId),
      ...(deps.auditIntervalMs ? { intervalMs: deps.auditIntervalMs } : {}),
    });
  }

  /**
   * The backup key of project `projectId`, made (and wrapped) at its first backup. A key that no
   * longer unwraps (its KEK gone) is refused, never replaced: backups sealed with it need it.
   */
  async #projectKey(projectId: string): Promise<Buffer> {
    const binding = `backup-key/${projectId}`;
    let row = await this.#db.selectFrom('backup_keys').selectAll().where('project_id', '=', projectId).executeTakeFirst();
    if (!row) {
      const wrapped = await this.#keys.wrap(randomBytes(32), binding);
      await this.#db
        .insertInto('backup_keys')
        .values({ project_id: projectId, kek_id: wrapped.kekId, wrapped: wrapped.wrapped, created_at: new Date().toISOString() })
        .onConflict((oc) => oc.column('project_id').doNothing())
        .execute();
      row = await this.#db.selectFrom('backup_keys').selectAll().where('project_id', '=', projectId).executeTakeFirstOrThrow();
    }
    return this.#keys.unwrap({ kekId: row.kek_id, wrapped: row.wrapped }, binding);
  }

  async #row(id: string, project?: string): Promise<BackupsTable> {
    const projectId = await projectIdByName(this.#db, project);
    const row = await this.#db.selectFrom('backups').selectAll().where('id', '=', id).where('project_id', '=', projectId).executeTakeFirst();
    if (!row) throw new NubisError('BACKUP_NOT_FOUND', `No backup ${id} in project ${project ?? 'default'}; see nubis backup list`);
    return row;
  }

  /** The backups of a project (of VM `vm` only, when given), oldest first. */
  async list(options: { vm?: string; project?: string } = {}): Promise<Backup[]> {
    const projectId = await projectIdByName(this.#db, options.project);
    let query = this.#db.selectFrom('backups').selectAll().where('project_id', '=', projectId);
    if (options.vm) query = query.where('vm_name', '=', options.vm);
    return (await query.orderBy('created_at').orderBy('id').execute()).map(viewOf);
  }

  async show(id: string, project?: string): Promise<Backup> {
    return viewOf(await this.#row(id, project));
  }

  /** Takes a crash-consistent backup of all of VM `ref`'s disks, running or stopped (an operation). */
  async create(ref: string, project?: string): Promise<Operation> {
    const row = await this.#vms.row(ref, project);
    refuseTemplate(row, 'back up');
    const claim = this.#owner.claim(row.id, 'snapshot', row.name);
    return this.#operations.startClaimed(claim, 'backup.create', { type: 'vm', id: row.id, name: row.name, projectId: row.project_id }, async (op) => {
      const current = await this.#vms.row(row.id, project);
      const host = await this.#hosts.row(current.host_id);
      const settings = await this.#settingsOf(current, host.name);
      const id = newId('bak');
      const started = Date.now();
      await op.report('backup', `Backing VM ${row.name} up on host ${host.name}: copying its disks as of now, sending the chunks the store has not got`, 0.1);
      const taken = await this.#hosts
        .agent(host)
        .takeBackup(
          row.id,
          id,
          { key: (await this.#projectKey(row.project_id)).toString('base64'), vm: { name: row.name, ...settings } },
          { timeoutMs: BACKUP_CALL_TIMEOUT_MS, signal: op.signal },
        );
      const record = recordOf(id, current, settings, taken, Date.now() - started);
      try {
        await this.#db.insertInto('backups').values(record).execute();
      } catch (error) {
        await this.#store.remove(id).catch(() => undefined);
        throw error;
      }
      const sent = (record.sent_bytes / 1048576).toFixed(1);
      await op.report('taken', `Backup ${id} of VM ${row.name}: ${(record.size_bytes / 1048576).toFixed(0)} MiB of disks, ${sent} MiB sent`, 0.95);
      return viewOf(record);
    });
  }

  async #settingsOf(row: VmsTable, hostName: string): Promise<BackupSettings> {
    const spec = JSON.parse(row.spec) as VmSpec;
    const image = await this.#db.selectFrom('images').select('name').where('id', '=', row.image_id).executeTakeFirstOrThrow();
    return { image: image.name, cpus: spec.cpus, memoryMb: row.memory_mb, networks: await networkNamesOf(this.#db, row.id), host: hostName };
  }

  /**
   * Checks a backup as a restore would read it: the store checks its bytes against the digests it
   * took at upload, then every chunk is fetched and opened with the project's key (a chunk that is
   * missing, altered or not this backup's is named). An operation.
   */
  async verify(id: string, project?: string): Promise<Operation> {
    const row = await this.#row(id, project);
    return this.#operations.start('backup.verify', { type: 'backup', id: row.id, name: row.id, projectId: row.project_id }, async (op) => {
      const stored = await this.#store.check(row.id);
      const keys = backupKeysOf(await this.#projectKey(row.project_id));
      const { chunks } = await this.#store.backup(row.id);
      const unreadable: string[] = [];
      for (const [index, chunk] of chunks.entries()) {
        try {
          openChunk(keys, chunk, await this.#store.getChunk(chunk));
        } catch (error) {
          unreadable.push(chunk);
          if (unreadable.length === 1) await op.report('damage', `Chunk ${chunk.slice(0, 16)}…: ${messageOf(error)}`, index / chunks.length);
        }
        if (index % 16 === 15) await op.report('verify', `Opened ${index + 1} of ${chunks.length} chunks`, (index + 1) / chunks.length);
      }
      const result: BackupVerification = {
        backup: row.id,
        ok: stored.missing.length === 0 && stored.corrupt.length === 0 && unreadable.length === 0,
        checkedChunks: chunks.length,
        missingChunks: stored.missing,
        corruptChunks: [...new Set([...stored.corrupt, ...unreadable.filter((c) => !stored.missing.includes(c))])],
      };
      if (!result.ok)
        throw new NubisError(
          'BACKUP_DAMAGED',
          `Backup ${row.id} is damaged: ${result.missingChunks.length} chunks missing, ${result.corruptChunks.length} altered of ${chunks.length}; it cannot be restored whole`,
          { details: result },
        );
      return result;
    });
  }

  /** Deletes a backup: the store forgets it (its chunks go at the next collection if no other backup uses them). */
  async remove(id: string, project?: string): Promise<{ deleted: string }> {
    const row = await this.#row(id, project);
    await this.#store.remove(row.id).catch((error: unknown) => {
      if (!(error instanceof NubisError && error.code === 'BACKUP_NOT_FOUND')) throw error;
    });
    await this.#db.deleteFrom('backups').where('id', '=', row.id).execute();
    return { deleted: row.id };
  }

  /**
   * Challenges backup `id` (or every backup of the project) to prove it still holds their blocks
   * (backup-audits.ts), recording each outcome.
   */
  async challenge(request: { backup?: string; blocks?: number }, project?: string): Promise<BackupAudit[]> {
    const rows = request.backup
      ? [await this.#row(request.backup, project)]
      : await this.#db
          .selectFrom('backups')
          .selectAll()
          .where('project_id', '=', await projectIdByName(this.#db, project))
          .orderBy('created_at')
          .execute();
    const audits: BackupAudit[] = [];
    for (const row of rows) audits.push(await this.auditor.challenge(row, request.blocks));
    return audits;
  }

  /** The recorded challenges of backup `id`, oldest first. */
  async audits(id: string, project?: string): Promise<BackupAudit[]> {
    return this.auditor.audits((await this.#row(id, project)).id);
  }

  /** Which files of the project's backups have `word` in their name, from the encrypted catalogs (backup-audits.ts). */
  async search(word: string, project?: string): Promise<BackupSearchHit[]> {
    const projectId = await projectIdByName(this.#db, project);
    const rows = await this.#db.selectFrom('backups').selectAll().where('project_id', '=', projectId).orderBy('created_at').execute();
    return searchCatalogs(this.#store, rows, await this.#projectKey(projectId), word);
  }

  /** Removes the store's chunks that no backup uses, except those written or found within `graceSeconds`. */
  collect(graceSeconds: number): Promise<{ removedChunks: number; freedBytes: number; keptChunks: number }> {
    return this.#store.collect(graceSeconds);
  }

  /** One file of backup `id`, read offline from its disk (backup-file-restore.ts). */
  async restoreFile(id: string, request: { path: string; disk?: string }, project?: string): Promise<RestoredFile> {
    const row = await this.#row(id, project);
    return restoreFile(this.#store, row.id, await this.#projectKey(row.project_id), request);
  }

  /** Makes VM `request.name` of backup `id`: its disks restored into new dir-pool volumes, then the VM created on them (an operation). */
  async restore(id: string, request: { name: string; pool?: string; host?: string; live?: boolean }, project?: string): Promise<Operation> {
    const row = await this.#row(id, project);
    return restoreBackup(
      { db: this.#db, hosts: this.#hosts, operations: this.#operations, vms: this.#vms, storage: this.#storage },
      { row, key: () => this.#projectKey(row.project_id), request, project },
    );
  }
}

function recordOf(id: string, vm: VmsTable, settings: BackupSettings, taken: TakenBackup, durationMs: number): BackupsTable {
  return {
    id,
    project_id: vm.project_id,
    vm_id: vm.id,
    vm_name: vm.name,
    vm_state: vm.actual_state,
    disks: JSON.stringify(taken.disks),
    size_bytes: taken.disks.reduce((sum, disk) => sum + disk.sizeBytes, 0),
    sent_bytes: taken.disks.reduce((sum, disk) => sum + disk.sentBytes, 0),
    stored_bytes: taken.storedBytes,
    duration_ms: durationMs,
    settings: JSON.stringify(settings),
    created_at: new Date().toISOString(),
    catalog_files: taken.catalogFiles,
    catalog_notes: JSON.stringify(taken.catalogNotes ?? []),
  };
}

export function viewOf(row: BackupsTable): Backup {
  return {
    id: row.id,
    vm: row.vm_name,
    vmState: row.vm_state,
    createdAt: row.created_at,
    sizeBytes: row.size_bytes,
    sentBytes: row.sent_bytes,
    storedBytes: row.stored_bytes,
    durationMs: row.duration_ms,
    disks: JSON.parse(row.disks) as Backup['disks'],
    catalogFiles: row.catalog_files,
    catalogNotes: JSON.parse(row.catalog_notes) as string[],
    settings: JSON.parse(row.settings) as BackupSettings,
  };
}
