/**
 * The desktop broker: hands a user with access to a pool a desktop (dedicated: the same one every
 * time; floating: a free one, booted spares first), takes it back when they leave or stay away
 * longer than the pool's grace time (a floating desktop is then reset to a fresh clone), and keeps
 * each pool's spare desktops booted. Decisions about one pool's desktops are taken one at a time
 * (a per-pool queue), so two users can never be handed the same desktop; the long work runs in
 * operations (desktop-machines.ts) outside the queue.
 *
 * The console relay calls `consoleOpened`/`consoleClosed` and the console-ticket route asks
 * `mayOpen` (README: Desktop pools).
 */
import { type Principal, authorize } from '../access/authorize.ts';
import { KeyedSerialQueue } from '../core/serial-queue.ts';
import { NubisError, isNubisError, messageOf } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import type { OperationManager } from '../control/operations.ts';
import { publishChange } from '../events/change-feed.ts';
import type { Db } from '../state/database.ts';
import type { DesktopPoolsTable, DesktopsTable } from '../state/schema.ts';
import type { DesktopAssignment, MyDesktop } from '../wire/desktop-schemas.ts';
import type { Operation } from '../wire/schemas.ts';
import type { DesktopMachines } from './desktop-machines.ts';
import { type DesktopEvent, DesktopRecords, desktopVmName, desktopVolumeName, recordDesktopEvent } from './desktop-records.ts';

/** VM states in which a desktop counts as booted (or booting) for a user or as a spare. */
const BOOTED = new Set(['pending', 'starting', 'running']);
/** A broken spare is tried again after this long. */
const BROKEN_RETRY_MS = 60_000;

/** Who asks: a user and the OpenID Connect groups their token carries. */
export type DesktopUser = Pick<Principal, 'userId' | 'userName' | 'groups'> & Partial<Pick<Principal, 'grants' | 'tokenProjectId' | 'tokenRole'>>;

export interface DesktopBrokerOptions {
  /** Milliseconds since the epoch; tests pass their own clock. Default `Date.now`. */
  now?: () => number;
  /** How often the grace timer and the spare keeping run. Default 5 s. */
  tickMs?: number;
  logger?: Logger;
}

export class DesktopBroker {
  readonly #db: Db;
  readonly #machines: DesktopMachines;
  readonly #operations: OperationManager;
  readonly #records: DesktopRecords;
  readonly #queue = new KeyedSerialQueue();
  readonly #now: () => number;
  readonly #tickMs: number;
  readonly #logger?: Logger;
  /** Open consoles per desktop VM, by user: kept in memory, as the consoles themselves are. */
  readonly #consoles = new Map<string, Map<string, number>>();
  /** How to close each open desktop console (by the VM it shows), when its desktop is taken back. */
  readonly #closers = new Map<(reason: string) => void, string>();
  /** Pools being deleted: the spare keeping leaves them alone. */
  readonly #deleting = new Set<string>();
  #timer?: NodeJS.Timeout;
  #ticking?: Promise<void>;

  constructor(deps: { db: Db; machines: DesktopMachines; operations: OperationManager }, options: DesktopBrokerOptions = {}) {
    this.#db = deps.db;
    this.#machines = deps.machines;
    this.#operations = deps.operations;
    this.#records = new DesktopRecords(deps.db);
    this.#now = options.now ?? Date.now;
    this.#tickMs = options.tickMs ?? 5000;
    this.#logger = options.logger;
  }

  #iso(): string {
    return new Date(this.#now()).toISOString();
  }

  /**
   * Starts the timer. No console survives a control-plane restart, so every held desktop counts
   * as disconnected from now: its grace time starts again. A provisioning or reset the restart
   * interrupted is owed: the first round does it again (a missing VM is provisioned afresh).
   */
  async start(): Promise<void> {
    // Work that a stopped control plane left half done (its operations are failed by now) is owed again.
    await this.#db
      .updateTable('desktops')
      .set({ state: 'resetting', operation_id: null, updated_at: this.#iso() })
      .where('state', 'in', ['provisioning', 'resetting'])
      .execute();
    await this.#db
      .updateTable('desktops')
      .set({ disconnected_at: this.#iso() })
      .where('assigned_user_id', 'is not', null)
      .where('disconnected_at', 'is', null)
      .execute();
    this.#timer = setInterval(() => void this.tick(), this.#tickMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#ticking;
  }

  /** One round of the timer: resets after the grace time, then spares kept in every pool. */
  async tick(): Promise<void> {
    if (this.#ticking) return this.#ticking;
    this.#ticking = (async () => {
      try {
        await this.sweepGrace();
        for (const pool of await this.#db.selectFrom('desktop_pools').selectAll().execute()) await this.keepSpares(pool);
      } catch (error) {
        this.#logger?.warn({ error: messageOf(error) }, 'desktop broker round failed');
      }
    })().finally(() => {
      this.#ticking = undefined;
    });
    return this.#ticking;
  }

  /** Runs `work` alone among the decisions about `poolId`'s desktops. */
  #decide<T>(poolId: string, work: () => Promise<T>): Promise<T> {
    return this.#queue.run(poolId, work);
  }

  async #event(pool: DesktopPoolsTable, desktop: DesktopsTable, event: Omit<DesktopEvent, 'pool' | 'desktop'>): Promise<void> {
    await recordDesktopEvent(this.#db, { ...event, pool: { ...pool, projectName: await this.#records.projectName(pool.project_id) }, desktop });
  }

  /** Writes a desktop's row; its event names `formerUser` too (the one it was just taken from). */
  async #update(id: string, values: Partial<DesktopsTable>, formerUser?: string | null): Promise<void> {
    await this.#db
      .updateTable('desktops')
      .set({ ...values, updated_at: this.#iso() })
      .where('id', '=', id)
      .execute();
    publishChange(this.#db, 'desktop', 'updated', id, formerUser ? { users: [formerUser] } : {});
  }

  /** True when `user` (or one of their groups) is entitled to `pool`. */
  async entitled(user: DesktopUser, poolId: string): Promise<boolean> {
    const subjects = [user.userId, ...(user.groups ?? []).map((group) => `group:${group}`)];
    const row = await this.#db
      .selectFrom('desktop_entitlements')
      .select('subject')
      .where('pool_id', '=', poolId)
      .where('subject', 'in', subjects)
      .executeTakeFirst();
    return row !== undefined;
  }

  /**
   * The pool `name` in `project` for `user`, refused unless they are entitled. Someone who could
   * not read the project's pools is not told whether a pool of that name exists.
   */
  async #usablePool(user: DesktopUser, name: string, project: { id: string; name: string }): Promise<DesktopPoolsTable> {
    const denied = new NubisError(
      'ACCESS_DENIED',
      `User ${user.userName} has no access to desktop pool ${name}; an admin grants it with nubis desktop pool grant ${name} ${user.userName}`,
    );
    let pool: DesktopPoolsTable;
    try {
      pool = await this.#records.pool(name, project);
    } catch (error) {
      const principal = user.grants ? (user as Principal) : undefined;
      if (principal && authorize(principal, 'desktop.read', { project }).allowed) throw error;
      throw denied;
    }
    if (!(await this.entitled(user, pool.id))) throw denied;
    return pool;
  }

  /**
   * Gives `user` their desktop of pool `name`: the one they hold, else (dedicated: once and for
   * good) a free booted spare, else one being readied, else a stopped one booted, else a new one
   * while the pool has fewer than its size. A full pool is `DESKTOP_POOL_FULL` (409).
   */
  async connect(user: DesktopUser, name: string, project: { id: string; name: string }): Promise<DesktopAssignment> {
    const pool = await this.#usablePool(user, name, project);
    const { desktop, operation } = await this.#decide(pool.id, async () => {
      if (this.#deleting.has(pool.id)) throw new NubisError('DESKTOP_POOL_NOT_FOUND', `Desktop pool ${pool.name} is being deleted`);
      const rows = await this.#records.desktops(pool.id);
      const held = rows.find((row) => row.assigned_user_id === user.userId);
      const desktop = held ?? (await this.#assignFree(pool, rows, user));
      const now = this.#iso();
      const consoleOpen = desktop.vm_id !== null && this.#openConsoles(desktop.vm_id) > 0;
      await this.#update(desktop.id, { connected_at: now, disconnected_at: consoleOpen ? null : now });
      await this.#event(pool, desktop, { action: 'desktop.connect', user: user.userName });
      const current = (await this.#records.desktop(desktop.id)) ?? desktop;
      return { desktop: current, operation: await this.#ensureBooted(pool, current) };
    });
    void this.keepSpares(pool).catch((error) => this.#logger?.warn({ error: messageOf(error) }, 'desktop spares'));
    return this.#assignmentView(pool, desktop.id, operation);
  }

  /** Picks and assigns a free desktop (see `connect`); refuses a full pool. */
  async #assignFree(pool: DesktopPoolsTable, rows: DesktopsTable[], user: DesktopUser): Promise<DesktopsTable> {
    const free = rows.filter((row) => row.assigned_user_id === null && row.state !== 'broken');
    const states = await this.#records.vmStates(free.flatMap((row) => (row.vm_id ? [row.vm_id] : [])));
    const vmState = (row: DesktopsTable) => (row.vm_id ? states.get(row.vm_id) : undefined);
    // A desktop left by someone and not reset yet (resetting without its operation) is never handed out.
    const clean = free.filter((row) => row.state !== 'resetting' || row.operation_id !== null);
    const choice =
      clean.find((row) => row.state === 'available' && vmState(row) === 'running') ??
      clean.find((row) => row.state === 'available' && BOOTED.has(vmState(row) ?? '')) ??
      clean.find((row) => row.state === 'provisioning' || row.state === 'resetting') ??
      clean.find((row) => row.state === 'available') ??
      (rows.length < pool.size ? await this.#newDesktop(pool, rows) : undefined);
    if (!choice) {
      const broken = rows.filter((row) => row.state === 'broken').length;
      throw new NubisError(
        'DESKTOP_POOL_FULL',
        `Desktop pool ${pool.name} is full: all ${pool.size} desktops are in use${broken > 0 ? ` (${broken} of them broken, see nubis desktop pool show ${pool.name})` : ''}; try again when someone leaves`,
        { details: { pool: pool.name, size: pool.size } },
      );
    }
    const now = this.#iso();
    await this.#update(choice.id, { assigned_user_id: user.userId, assigned_at: now });
    await this.#event(pool, choice, { action: 'desktop.assign', user: user.userName });
    return { ...choice, assigned_user_id: user.userId, assigned_at: now };
  }

  /** A new desktop in the lowest free slot, its provisioning started. */
  async #newDesktop(pool: DesktopPoolsTable, rows: DesktopsTable[]): Promise<DesktopsTable> {
    const taken = new Set(rows.map((row) => row.slot));
    let slot = 1;
    while (taken.has(slot)) slot += 1;
    const row: DesktopsTable = {
      id: `dsk-${pool.id.slice(4, 12)}-${slot}`,
      pool_id: pool.id,
      slot,
      vm_id: null,
      vm_name: desktopVmName(pool.name, slot),
      volume: desktopVolumeName(pool.name, slot),
      state: 'provisioning',
      error: null,
      operation_id: null,
      assigned_user_id: null,
      assigned_at: null,
      connected_at: null,
      disconnected_at: null,
      updated_at: this.#iso(),
    };
    await this.#db.insertInto('desktops').values(row).execute();
    publishChange(this.#db, 'desktop', 'created', row.id);
    const operation = await this.#machines.provision(pool, row);
    return { ...row, operation_id: operation.id };
  }

  /** Boots a held desktop whose VM is stopped; the operation readying it, if any. */
  async #ensureBooted(pool: DesktopPoolsTable, desktop: DesktopsTable): Promise<Operation | undefined> {
    if (desktop.state === 'available' && desktop.vm_id) {
      const state = (await this.#records.vmStates([desktop.vm_id])).get(desktop.vm_id);
      if (state && !BOOTED.has(state) && state !== 'paused' && state !== 'migrating') return this.#machines.boot(pool, desktop);
    }
    if (desktop.state === 'broken') {
      throw new NubisError(
        'DESKTOP_BROKEN',
        `Desktop ${desktop.vm_name} is broken (${desktop.error ?? 'unknown'}); an admin sees it in nubis desktop pool show ${pool.name}`,
      );
    }
    return desktop.operation_id ? this.#operations.get(desktop.operation_id).catch(() => undefined) : undefined;
  }

  async #assignmentView(pool: DesktopPoolsTable, desktopId: string, operation: Operation | undefined): Promise<DesktopAssignment> {
    const row = await this.#records.desktop(desktopId);
    if (!row) throw new NubisError('DESKTOP_POOL_NOT_FOUND', `Desktop pool ${pool.name} was deleted meanwhile`);
    const [desktop] = await this.#records.desktopViews(pool, [row]);
    return {
      pool: pool.name,
      project: await this.#records.projectName(pool.project_id),
      mode: pool.mode,
      desktop: desktop!,
      ...(operation && operation.status === 'running' ? { operation } : {}),
    };
  }

  /**
   * `user` logs off from their desktop of pool `name`. Floating: it is taken back and reset to a
   * fresh clone (the reset's operation is returned). Dedicated: it stays theirs, as it is.
   */
  async leave(user: DesktopUser, name: string, project: { id: string; name: string }): Promise<{ pool: string; desktop?: string; operation?: Operation }> {
    const pool = await this.#usablePool(user, name, project);
    return this.#decide(pool.id, async () => {
      const held = (await this.#records.desktops(pool.id)).find((row) => row.assigned_user_id === user.userId);
      if (!held)
        throw new NubisError(
          'DESKTOP_NOT_ASSIGNED',
          `User ${user.userName} holds no desktop of pool ${pool.name}; nubis desktop connect ${pool.name} gets one`,
        );
      await this.#event(pool, held, { action: 'desktop.leave', user: user.userName });
      if (pool.mode === 'dedicated') {
        await this.#update(held.id, { disconnected_at: this.#iso() });
        return { pool: pool.name, desktop: held.vm_name };
      }
      const operation = await this.#release(pool, held, user.userName, 'left');
      return { pool: pool.name, desktop: held.vm_name, ...(operation ? { operation } : {}) };
    });
  }

  /**
   * Takes a floating desktop back from its user and resets it. It is marked `resetting` in the
   * same write that frees it, so nobody gets it before its fresh clone; a reset refused because
   * the VM is busy (a migration) is tried again by the spare keeping.
   */
  async #release(pool: DesktopPoolsTable, desktop: DesktopsTable, userName: string, reason: string): Promise<Operation | undefined> {
    const values = { assigned_user_id: null, assigned_at: null, connected_at: null, disconnected_at: null, state: 'resetting' as const, operation_id: null };
    await this.#update(desktop.id, values, desktop.assigned_user_id);
    if (desktop.vm_id) this.#closeConsoles(desktop.vm_id, `The desktop was taken back (${reason})`);
    return this.#resetNow(pool, { ...desktop, assigned_user_id: null, state: 'resetting', operation_id: null }, userName, reason);
  }

  async #resetNow(pool: DesktopPoolsTable, desktop: DesktopsTable, userName: string | undefined, reason: string): Promise<Operation | undefined> {
    try {
      const operation = await this.#machines.reset(pool, desktop);
      await this.#event(pool, desktop, { action: 'desktop.reset', ...(userName ? { user: userName } : {}), reason });
      return operation;
    } catch (error) {
      if (isNubisError(error) && error.code === 'VM_BUSY') {
        this.#logger?.info({ desktop: desktop.vm_name }, `desktop reset postponed: ${error.message}`);
        return undefined;
      }
      throw error;
    }
  }

  /** "My desktops": the pools `user` may use, each with the desktop they hold there, if any. */
  async myDesktops(user: DesktopUser): Promise<MyDesktop[]> {
    const subjects = [user.userId, ...(user.groups ?? []).map((group) => `group:${group}`)];
    const pools = await this.#db
      .selectFrom('desktop_pools')
      .innerJoin('desktop_entitlements', 'desktop_entitlements.pool_id', 'desktop_pools.id')
      .selectAll('desktop_pools')
      .where('desktop_entitlements.subject', 'in', subjects)
      .distinct()
      .orderBy('desktop_pools.name')
      .execute();
    const result: MyDesktop[] = [];
    for (const pool of pools) {
      const held = await this.#db
        .selectFrom('desktops')
        .selectAll()
        .where('pool_id', '=', pool.id)
        .where('assigned_user_id', '=', user.userId)
        .executeTakeFirst();
      const [desktop] = held ? await this.#records.desktopViews(pool, [held]) : [];
      result.push({ pool: pool.name, project: await this.#records.projectName(pool.project_id), mode: pool.mode, ...(desktop ? { desktop } : {}) });
    }
    return result;
  }

  // ------------------------------------------------------------------ consoles and the grace time

  #openConsoles(vmId: string): number {
    let count = 0;
    for (const open of this.#consoles.get(vmId)?.values() ?? []) count += open;
    return count;
  }

  /** The user a desktop VM is assigned to (their id), or undefined for a VM that is no held desktop. */
  async assignedUserOf(vmId: string): Promise<string | undefined> {
    return (await this.#records.desktopOfVm(vmId))?.assigned_user_id ?? undefined;
  }

  /**
   * Whether `user` may open the consoles (screen and serial) of `vmId` because it is the desktop
   * assigned to them in a pool they are still entitled to: the console-ticket route and the
   * redemption of its ticket accept this as an alternative to `vm.console`. A token limited to
   * another project reaches no desktop there.
   */
  async mayOpen(user: DesktopUser, vmId: string): Promise<boolean> {
    const desktop = await this.#records.desktopOfVm(vmId);
    if (!desktop || desktop.assigned_user_id !== user.userId || desktop.state !== 'available') return false;
    const pool = await this.#records.poolById(desktop.pool_id);
    if (!pool || this.#deleting.has(pool.id)) return false;
    if (user.tokenProjectId && user.tokenProjectId !== pool.project_id) return false;
    return this.entitled(user, pool.id);
  }

  /**
   * The console relay tells the broker that `userId` opened a console of desktop VM `vmId`: the
   * grace time stops until the last of their consoles closes. `close` is called if the desktop
   * is taken from them meanwhile (left, revoked, reset): a console outlives no assignment.
   */
  async consoleOpened(vmId: string, userId: string, close?: (reason: string) => void): Promise<void> {
    const desktop = await this.#records.desktopOfVm(vmId);
    if (!desktop || desktop.assigned_user_id !== userId) return;
    const users = this.#consoles.get(vmId) ?? new Map<string, number>();
    users.set(userId, (users.get(userId) ?? 0) + 1);
    this.#consoles.set(vmId, users);
    if (close) this.#closers.set(close, vmId);
    await this.#update(desktop.id, { connected_at: this.#iso(), disconnected_at: null });
    const pool = await this.#records.poolById(desktop.pool_id);
    const user = (await this.#records.userNames([userId])).get(userId);
    if (pool) await this.#event(pool, desktop, { action: 'desktop.console-connect', ...(user ? { user } : {}) });
  }

  /** The console relay tells the broker that a console of `vmId` opened by `userId` closed. */
  async consoleClosed(vmId: string, userId: string, close?: (reason: string) => void): Promise<void> {
    if (close) this.#closers.delete(close);
    const users = this.#consoles.get(vmId);
    const open = users?.get(userId) ?? 0;
    if (!users || open === 0) return;
    if (open > 1) users.set(userId, open - 1);
    else users.delete(userId);
    if (users.size === 0) this.#consoles.delete(vmId);
    const desktop = await this.#records.desktopOfVm(vmId);
    if (desktop?.assigned_user_id !== userId || this.#openConsoles(vmId) > 0) return;
    await this.#update(desktop.id, { disconnected_at: this.#iso() });
    const pool = await this.#records.poolById(desktop.pool_id);
    const user = (await this.#records.userNames([userId])).get(userId);
    if (pool) await this.#event(pool, desktop, { action: 'desktop.console-disconnect', ...(user ? { user } : {}) });
  }

  /** Closes every console still open on `vmId` (its desktop was taken back). */
  #closeConsoles(vmId: string, reason: string): void {
    this.#consoles.delete(vmId);
    for (const [close, of] of [...this.#closers]) {
      if (of !== vmId) continue;
      this.#closers.delete(close);
      close(reason);
    }
  }

  /**
   * Resets every floating desktop whose user has had no console open for longer than its pool's
   * grace time: since they closed the last one, or since they connected without opening one.
   */
  async sweepGrace(): Promise<Operation[]> {
    const rows = await this.#db
      .selectFrom('desktops')
      .innerJoin('desktop_pools', 'desktop_pools.id', 'desktops.pool_id')
      .selectAll('desktops')
      .select(['desktop_pools.grace_seconds'])
      .where('desktop_pools.mode', '=', 'floating')
      .where('desktops.assigned_user_id', 'is not', null)
      .where('desktops.disconnected_at', 'is not', null)
      .execute();
    const now = this.#now();
    const started: Operation[] = [];
    for (const row of rows) {
      if (now - Date.parse(row.disconnected_at!) <= row.grace_seconds * 1000) continue;
      const pool = await this.#records.poolById(row.pool_id);
      if (!pool || this.#deleting.has(pool.id)) continue;
      const operation = await this.#decide(pool.id, async () => {
        // Read again in turn: the user may have come back meanwhile.
        const current = await this.#records.desktop(row.id);
        if (!current || current.assigned_user_id !== row.assigned_user_id || current.disconnected_at === null) return undefined;
        if (current.vm_id && this.#openConsoles(current.vm_id) > 0) return undefined;
        const user = (await this.#records.userNames([row.assigned_user_id!])).get(row.assigned_user_id!);
        await this.#event(pool, current, { action: 'desktop.leave', ...(user ? { user } : {}), reason: 'grace' });
        return this.#release(pool, current, user ?? row.assigned_user_id!, 'grace');
      });
      if (operation) started.push(operation);
    }
    return started;
  }

  // ------------------------------------------------------------------ spares

  /**
   * Keeps `pool`'s spares: resets still owed (postponed because the VM was busy) are retried,
   * broken free desktops are tried again after a while, and free desktops are booted (stopped
   * ones first, then new ones up to the pool's size) until `spare` of them are booted or being
   * readied. Returns the operations it started.
   */
  async keepSpares(pool: DesktopPoolsTable): Promise<Operation[]> {
    if (this.#deleting.has(pool.id)) return [];
    return this.#decide(pool.id, async () => {
      const started: Operation[] = [];
      const rows = await this.#records.desktops(pool.id);
      const states = await this.#records.vmStates(rows.flatMap((row) => (row.vm_id ? [row.vm_id] : [])));
      for (const row of rows) {
        if (row.state === 'available' && row.vm_id && !states.has(row.vm_id)) {
          // Its VM was deleted by hand: the desktop is owed a new one (reset provisions it afresh).
          await this.#update(row.id, { state: 'resetting', operation_id: null, error: `VM ${row.vm_name} was deleted` });
          row.state = 'resetting';
          row.operation_id = null;
        }
      }
      for (const row of rows) {
        const owed = row.state === 'resetting' && row.operation_id === null;
        const retry = row.state === 'broken' && row.assigned_user_id === null && this.#now() - Date.parse(row.updated_at) > BROKEN_RETRY_MS;
        if (!owed && !retry) continue;
        const operation = await this.#resetNow(pool, row, undefined, owed ? 'owed' : 'broken').catch((error) => {
          this.#logger?.warn({ desktop: row.vm_name }, `desktop reset failed: ${messageOf(error)}`);
          return undefined;
        });
        if (operation) {
          started.push(operation);
          row.state = 'resetting';
          row.operation_id = operation.id;
        }
      }
      const free = rows.filter((row) => row.assigned_user_id === null);
      const readying = (row: DesktopsTable) =>
        (row.state === 'provisioning' || row.state === 'resetting') && (row.operation_id !== null || row.state === 'provisioning');
      const booted = (row: DesktopsTable) => row.state === 'available' && BOOTED.has(states.get(row.vm_id ?? '') ?? '');
      let spares = free.filter((row) => readying(row) || booted(row)).length;
      for (const row of free) {
        if (spares >= pool.spare) break;
        if (row.state !== 'available' || booted(row)) continue;
        started.push(await this.#machines.boot(pool, row));
        spares += 1;
      }
      const all = [...rows];
      while (spares < pool.spare && all.length < pool.size) {
        const created = await this.#newDesktop(pool, all);
        all.push(created);
        if (created.operation_id) started.push(await this.#operations.get(created.operation_id));
        spares += 1;
      }
      return started;
    });
  }

  /**
   * Takes `userId`'s desktop of `pool` back (their access was revoked): it is freed and reset,
   * whatever the pool's mode.
   */
  async takeBack(pool: DesktopPoolsTable, userId: string, userName: string, reason: string): Promise<void> {
    await this.#decide(pool.id, async () => {
      const held = (await this.#records.desktops(pool.id)).find((row) => row.assigned_user_id === userId);
      if (!held) return;
      await this.#event(pool, held, { action: 'desktop.release', user: userName, reason });
      await this.#release(pool, held, userName, reason);
    });
  }

  /** Resets every free desktop of `pool` that has a VM (its base snapshot was taken again). */
  async resetFree(pool: DesktopPoolsTable): Promise<Operation[]> {
    return this.#decide(pool.id, async () => {
      const started: Operation[] = [];
      for (const row of await this.#records.desktops(pool.id)) {
        if (row.assigned_user_id !== null || row.state !== 'available') continue;
        const operation = await this.#resetNow(pool, row, undefined, 'new base');
        if (operation) started.push(operation);
      }
      return started;
    });
  }

  /** Runs `work` while no decision about `poolId`'s desktops is taken (the snapshot is swapped). */
  whileDeciding<T>(poolId: string, work: () => Promise<T>): Promise<T> {
    return this.#decide(poolId, work);
  }

  // ------------------------------------------------------------------ pool deletion

  /** Stops handing out and keeping `poolId`'s desktops (its deletion has begun); waits for decisions in progress. */
  async closePool(poolId: string): Promise<void> {
    this.#deleting.add(poolId);
    await this.#decide(poolId, async () => undefined);
  }

  /** Forgets a deleted pool (or one whose deletion failed and may be tried again). */
  reopenPool(poolId: string): void {
    this.#deleting.delete(poolId);
  }
}
