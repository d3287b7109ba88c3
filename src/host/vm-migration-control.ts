/**
 * The migration-control calls of one managed VM: starting the disk mirrors and the stream on a
 * source, changing the stream's parameters, switching to post-copy, cancelling, and the post-copy
 * recovery on either end. Each runs in the VM's migration lane (`vm-lanes.ts`; the rules and why
 * are in the header of `managed-vm.ts`): one at a time, never behind a lifecycle action. The
 * reads (`migrationStatus`, `diskMirrors`) are not queued: the control plane polls them.
 */
import type { MigrationTlsCredentials } from '../compute/qemu/migration-tls.ts';
import { MIGRATED_BITMAPS } from './backup-views.ts';
import type { QmpEvent } from '../compute/qmp/qmp-client.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import type { VmLanes } from './vm-lanes.ts';
import type { VmQemu } from './vm-qemu.ts';
import type { PauseTimes, VmStatus } from '../agent-api/contract.ts';

/** What an incoming migration with local disks needs on the destination (see `ManagedVm.prepareIncoming`). */
export interface IncomingMirror {
  newFiles: Array<{ path: string; sizeBytes: number }>;
  listen: { host: string; port: number };
  diskIds: string[];
}

/** What an incoming migration may bring besides its stream: local disks' copies, and TLS. */
export type IncomingExtras = { mirror?: IncomingMirror; tls?: MigrationTlsCredentials };

/** How a source sends a VM (agent contract `MigrateRequest`). */
export interface MigrateOutOptions {
  capabilities: Record<string, boolean>;
  downtimeLimitMs: number;
  maxBandwidthBytesPerSec?: number;
  mirroredDisks?: string[];
  /** The source's credentials for a migration over TLS (compute/qemu/migration-tls.ts). */
  tls?: MigrationTlsCredentials;
}

/** `query-migrate` states in which no migration stream runs (`none`: none ever ran). */
export const MIGRATION_ENDED = new Set(['none', 'completed', 'failed', 'cancelled']);

/** QEMU's migration state (`query-migrate`), `none` when it has none; undefined when QEMU did not answer. */
export async function migrationStateOf(qemu: VmQemu): Promise<string | undefined> {
  return qemu.migrationStatus().then(
    (status) => String(status.status ?? 'none'),
    () => undefined,
  );
}

export interface VmMigrationControlOptions {
  lanes: VmLanes;
  /** The VM's QEMU on this host, if it has one. */
  qemu: () => VmQemu | undefined;
  name: () => string;
  status: () => VmStatus;
  log?: (level: 'error', message: string) => void;
}

/** Migration control of one VM; see the file header. */
export class VmMigrationControl {
  readonly #options: VmMigrationControlOptions;
  /** A migration's true pause is the source's STOP to the destination's RESUME, which QEMU's own `downtime` leaves out. */
  #pauseTimes: PauseTimes = {};

  constructor(options: VmMigrationControlOptions) {
    this.#options = Object.freeze({ ...options });
  }

  #qemu(): VmQemu {
    const qemu = this.#options.qemu();
    if (!qemu) throw new NubisError('VM_INVALID_STATE', `VM ${this.#options.name()} has no QEMU on this host`);
    return qemu;
  }

  #running(): VmQemu {
    const qemu = this.#options.qemu();
    if (qemu?.state !== 'running') throw new NubisError('VM_INVALID_STATE', `VM ${this.#options.name()} is ${this.#options.status().state}, not running`);
    return qemu;
  }

  /**
   * The times of the VM's last STOP and RESUME, without asking QEMU: on a post-copy destination
   * whose main loop waits for a page, in-band QMP commands queue up, and a full queue keeps
   * even out-of-band commands (the recovery) from being read.
   */
  pauseTimes(): PauseTimes {
    return { ...this.#pauseTimes };
  }

  /** Source: true while QEMU reports an outgoing migration stream (the lanes' `streamRuns`). */
  async streamRuns(): Promise<boolean> {
    const qemu = this.#options.qemu();
    const state = qemu ? await migrationStateOf(qemu) : undefined;
    return state !== undefined && !MIGRATION_ENDED.has(state);
  }

  /** Source: starts mirroring local disks into the destination's NBD exports. */
  startDiskMirrors(disks: Array<{ id: string; sync: 'full' | 'top' }>, target: { host: string; port: number }): Promise<void> {
    return this.#options.lanes.migration(() => this.#running().startDiskMirrors(disks, target), { starts: 'mirroring its disks' });
  }

  /**
   * Source: starts sending the running VM to `uri`, and returns once QEMU has started. With
   * mirrored disks QEMU pauses right before the switch-over (the VM already stopped); the mirrors
   * are ended there (queued on QEMU's event, `#switchOver`), so the destination's copies are
   * complete, and the migration goes on, all here and without a round trip.
   */
  migrateOut(uri: string, options: MigrateOutOptions): Promise<VmStatus> {
    return this.#options.lanes.migration(
      async () => {
        const qemu = this.#running();
        const mirrored = (options.mirroredDisks ?? []).length > 0;
        // Always: TLS of this migration, or none (a former migration's must not linger).
        await qemu.loadMigrationTls(options.tls);
        // MIGRATION events are how this agent learns of the pre-switchover pause. The disks'
        // dirty bitmaps go along, so the next backup on the destination still reads only what
        // changed since the last one (host/backup-views.ts); the destination turns it on too.
        await qemu.setMigrationCapabilities({ ...options.capabilities, events: true, 'pause-before-switchover': mirrored, [MIGRATED_BITMAPS]: true });
        await qemu.startMigration(uri, { downtimeLimitMs: options.downtimeLimitMs, maxBandwidthBytesPerSec: options.maxBandwidthBytesPerSec });
        return this.#options.status();
      },
      { starts: 'starting a migration', outgoing: true },
    );
  }

  /**
   * Every QMP event of the VM's QEMU. `pre-switchover` comes only with `pause-before-switchover`,
   * i.e. mirrored disks; its step is queued in the migration lane, so that it never interleaves
   * with a cancel or an abort of the mirrors asked meanwhile.
   */
  onQmpEvent(event: QmpEvent): void {
    if (event.event === 'STOP') this.#pauseTimes = { ...this.#pauseTimes, stoppedAtMs: event.timestampMs };
    if (event.event === 'RESUME') this.#pauseTimes = { ...this.#pauseTimes, resumedAtMs: event.timestampMs };
    const qemu = this.#options.qemu();
    if (event.event === 'MIGRATION' && event.data.status === 'pre-switchover' && qemu) void this.#options.lanes.migration(() => this.#switchOver(qemu));
  }

  /** Source in `pre-switchover`: ends the mirrors (flushed, complete) and lets QEMU switch over. */
  async #switchOver(qemu: VmQemu): Promise<void> {
    try {
      await qemu.endDiskMirrors();
      await qemu.continueMigration();
    } catch (error) {
      this.#options.log?.(
        'error',
        `VM ${this.#options.name()}: ending the disk mirrors at the switch-over failed, cancelling the migration: ${messageOf(error)}`,
      );
      await qemu.cancelMigration().catch(() => undefined);
    }
  }

  /** Changes the parameters of the running migration (e.g. a widened downtime limit). */
  setMigrationParameters(parameters: { downtimeLimitMs?: number; maxBandwidthBytesPerSec?: number }): Promise<void> {
    return this.#options.lanes.migration(() => this.#qemu().setMigrationParameters(parameters));
  }

  /** Source: switches the running migration to post-copy. */
  startPostcopy(): Promise<void> {
    return this.#options.lanes.migration(() => this.#qemu().startPostcopy());
  }

  /** Source: cancels the migration; the VM goes on running here. Never fails. */
  cancelMigration(): Promise<void> {
    return this.#options.lanes.migration(async () => {
      await this.#options
        .qemu()
        ?.cancelMigration()
        .catch(() => undefined);
    });
  }

  /** Source, on rollback: abandons the disk mirrors. */
  abortDiskMirrors(): Promise<void> {
    return this.#options.lanes.migration(() => this.#qemu().endDiskMirrors({ force: true }));
  }

  /** Either end, in post-copy: closes the stream so this end waits in `postcopy-paused` (out-of-band). */
  pauseMigration(): Promise<void> {
    return this.#options.lanes.migration(() => this.#qemu().pauseMigration());
  }

  /** Destination in `postcopy-paused`: listens on `uri` for the source to resume (out-of-band). */
  recoverIncoming(uri: string): Promise<void> {
    return this.#options.lanes.migration(() => this.#qemu().recoverIncomingMigration(uri));
  }

  /** Source in `postcopy-paused`: reconnects to the destination's recovery listener. */
  resumeMigration(uri: string): Promise<void> {
    return this.#options.lanes.migration(() => this.#qemu().resumeMigration(uri));
  }

  /** QEMU's `query-migrate` (not queued). */
  migrationStatus(): Promise<Record<string, unknown>> {
    return this.#qemu().migrationStatus();
  }

  /** Source: the disk mirrors of a migration in progress (not queued). */
  diskMirrors(): ReturnType<VmQemu['diskMirrors']> {
    return this.#qemu().diskMirrors();
  }
}
