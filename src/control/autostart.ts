/**
 * Start on boot: when a host's agent starts again after the host rebooted, the VMs of that host
 * marked `autostart` that should run but do not are started, lowest boot order first, each
 * waited for (its guest ready) and followed by its boot delay, as Proxmox's start order does.
 * A VM still running (the agent alone restarted) is left as it is.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { messageOf } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import type { Db } from '../state/database.ts';
import type { OperationManager } from './operations.ts';
import type { VmService } from './vms.ts';

/** States of a VM whose QEMU is not running on its host. */
const DOWN = ['crashed', 'stopped', 'missing'];
/** A host still fenced is waited for this long before its VMs start (its storage I/O returns when it is let back in). */
const FENCED_WAIT_MS = 60_000;

export class Autostart {
  readonly #db: Db;
  readonly #vms: Pick<VmService, 'act'>;
  readonly #operations: OperationManager;
  readonly #logger: Logger | undefined;
  /** Hosts whose agent joined and whose first full report has not come yet. */
  readonly #joined = new Set<string>();
  readonly #running = new Set<string>();

  constructor(deps: { db: Db; vms: Pick<VmService, 'act'>; operations: OperationManager; logger?: Logger }) {
    this.#db = deps.db;
    this.#vms = deps.vms;
    this.#operations = deps.operations;
    this.#logger = deps.logger;
  }

  /** The agent of `hostId` (re)joined: its next full report says what came back with it. */
  joined(hostId: string): void {
    this.#joined.add(hostId);
  }

  /** A full report of `hostId` was applied: after a join, start its autostart VMs that are down. */
  reported(hostId: string): void {
    if (!this.#joined.delete(hostId) || this.#running.has(hostId)) return;
    this.#running.add(hostId);
    void this.startDown(hostId)
      .catch((error: unknown) => this.#logger?.error(`autostart on ${hostId} failed: ${messageOf(error)}`))
      .finally(() => this.#running.delete(hostId));
  }

  /** Starts the host's autostart VMs that are down, in boot order; returns the names started. */
  async startDown(hostId: string): Promise<string[]> {
    for (const waitedSince = Date.now(); Date.now() - waitedSince < FENCED_WAIT_MS; await delay(1_000)) {
      const host = await this.#db.selectFrom('hosts').select('fenced_at').where('id', '=', hostId).executeTakeFirst();
      if (!host?.fenced_at) break;
    }
    const vms = await this.#db
      .selectFrom('vms')
      .select(['id', 'name', 'project_id', 'actual_state', 'boot_delay_seconds'])
      .where('host_id', '=', hostId)
      .where('autostart', '=', 1)
      .where('desired_state', '=', 'running')
      .orderBy('boot_order')
      .orderBy('name')
      .execute();
    const started: string[] = [];
    for (const vm of vms) {
      if (!DOWN.includes(vm.actual_state)) continue;
      const project = await this.#db.selectFrom('projects').select('name').where('id', '=', vm.project_id).executeTakeFirstOrThrow();
      try {
        const operation = await this.#vms.act(vm.id, 'start', { project: project.name });
        const final = await this.#operations.wait(operation.id);
        if (final.status !== 'succeeded') throw new Error(final.error?.message ?? final.status);
        started.push(vm.name);
        this.#logger?.info({ vm: vm.name }, 'autostarted');
      } catch (error) {
        this.#logger?.warn({ vm: vm.name }, `autostart failed: ${messageOf(error)}`);
      }
      if (vm.boot_delay_seconds > 0) await delay(vm.boot_delay_seconds * 1000);
    }
    return started;
  }
}
