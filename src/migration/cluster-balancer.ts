/**
 * Balancing the cluster (DRS): plans moves with the balancing core (control/balance-plan.ts, where
 * the metric and the decision rule are written down) from the state as it is
 * (balance-inputs.ts), and carries them out one at a time as live migrations through the
 * migration service, each re-checked by the scheduler when it starts and recorded in the VM's
 * placement history as `balance`. A run is one operation with progress per move, like an
 * evacuation. The background balancer (`balance: auto`) acts only once the imbalance has stayed
 * above the threshold for `ROUNDS_BEFORE_ACTING` rounds in a row (Proxmox waits three rounds).
 */
import { NubisError, messageOf } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { hostLoad, imbalanceOf, planBalance, thresholdLevel } from '../control/balance-plan.ts';
import type { OperationContext, OperationManager } from '../control/operations.ts';
import { clusterMetrics } from '../metrics/metrics.ts';
import type { Db } from '../state/database.ts';
import { auditedTransaction } from '../audit/audit-context.ts';
import type { BalanceProposal, BalanceRun, ClusterSettings, ClusterView } from '../wire/cluster-schemas.ts';
import type { Operation } from '../wire/schemas.ts';
import { type BalanceInputDeps, loadBalanceInputs } from './balance-inputs.ts';
import type { MigrationService } from './migration-service.ts';

/** Consecutive background rounds above the threshold before the balancer acts. */
export const ROUNDS_BEFORE_ACTING = 3;
/** A balancing move gives up (and the VM stays) past this; the plan refuses moves predicted longer. */
export const MOVE_TIMEOUT_SECONDS = 300;
export const DEFAULT_CLUSTER_SETTINGS: ClusterSettings = {
  balance: 'manual',
  threshold: 3,
  intervalSeconds: 300,
  cooldownSeconds: 3600,
  maxMoves: 8,
  migrationTls: 'optional',
};

/** A proposal with the VM ids its moves need to be carried out. */
interface Plan {
  proposal: BalanceProposal;
  vmIds: string[];
}

type MoveResult = BalanceRun['moves'][number];

export class ClusterBalancer {
  readonly #db: Db;
  readonly #inputs: BalanceInputDeps;
  readonly #operations: OperationManager;
  readonly #migrations: Pick<MigrationService, 'migrate'>;
  readonly #logger?: Logger;
  /** The run under way (its operation id, or `starting`), so that runs never overlap. */
  #running: string | undefined;
  #roundsAbove = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(deps: BalanceInputDeps & { operations: OperationManager; migrations: Pick<MigrationService, 'migrate'>; logger?: Logger }) {
    this.#db = deps.db;
    this.#inputs = { db: deps.db, placement: deps.placement, owner: deps.owner, dirPools: deps.dirPools };
    this.#operations = deps.operations;
    this.#migrations = deps.migrations;
    this.#logger = deps.logger;
  }

  async settings(): Promise<ClusterSettings> {
    const row = await this.#db.selectFrom('cluster_settings').selectAll().where('id', '=', 'cluster').executeTakeFirst();
    if (!row) return { ...DEFAULT_CLUSTER_SETTINGS };
    return {
      balance: row.balance,
      threshold: row.threshold,
      intervalSeconds: row.interval_seconds,
      cooldownSeconds: row.cooldown_seconds,
      maxMoves: row.max_moves,
      migrationTls: row.migration_tls === 'required' ? 'required' : 'optional',
    };
  }

  /** Changes the settings (`nubis cluster set`); a new interval takes effect at once. */
  async update(change: Partial<ClusterSettings>): Promise<ClusterView> {
    const settings = { ...(await this.settings()), ...change };
    const values = {
      balance: settings.balance,
      threshold: settings.threshold,
      interval_seconds: settings.intervalSeconds,
      cooldown_seconds: settings.cooldownSeconds,
      max_moves: settings.maxMoves,
      migration_tls: settings.migrationTls,
      updated_at: new Date().toISOString(),
    };
    await auditedTransaction(this.#db, (trx) =>
      trx
        .insertInto('cluster_settings')
        .values({ id: 'cluster', last_run: null, ...values })
        .onConflict((conflict) => conflict.column('id').doUpdateSet(values))
        .execute(),
    );
    if (settings.balance !== 'auto') this.#roundsAbove = 0;
    if (this.#timer) this.#schedule(settings.intervalSeconds);
    return this.view();
  }

  /** The settings, the imbalance now with every host's load, and the last run. */
  async view(): Promise<ClusterView> {
    const settings = await this.settings();
    const hosts = await this.#inputs.placement.schedulerHosts();
    const level = thresholdLevel(settings.threshold);
    const lastRun = await this.#lastRun();
    return {
      settings,
      imbalance: {
        value: round(imbalanceOf(hosts)),
        actAbove: level.actAbove,
        target: level.target,
        roundsAbove: this.#roundsAbove,
        hosts: hosts.map((host) => ({ host: host.name, status: host.status, load: roundLoad(hostLoad(host)) })),
      },
      ...(this.#running && this.#running !== 'starting' ? { running: this.#running } : {}),
      ...(lastRun ? { lastRun } : {}),
    };
  }

  /**
   * `nubis cluster balance`: with `dryRun`, the proposal and nothing moves; else the moves run as
   * an operation, or, when no move pays, the (empty) proposal is the answer.
   */
  async balance(options: { dryRun?: boolean }): Promise<{ proposal: BalanceProposal } | { operation: Operation }> {
    const settings = await this.settings();
    if (!options.dryRun && settings.balance === 'off')
      throw new NubisError('CLUSTER_BALANCE_OFF', 'Balancing is off; turn it on with nubis cluster set --balance manual (or auto), or ask for --dry-run');
    this.#refuseIfRunning();
    const plan = await this.#plan(settings, 'manual');
    if (options.dryRun) return { proposal: plan.proposal };
    if (plan.proposal.moves.length === 0) {
      await this.#recordRun({ at: new Date().toISOString(), trigger: 'manual', ...summary(plan.proposal), moves: [] });
      return { proposal: plan.proposal };
    }
    return { operation: await this.#start(plan, 'manual') };
  }

  /**
   * One round of the background balancer: with `balance: auto`, counts the rounds in a row the
   * imbalance is above the threshold (none while a run is under way) and, at
   * `ROUNDS_BEFORE_ACTING`, plans and runs the moves, then counts from zero again.
   * Returns the run's operation when it started one.
   */
  async round(): Promise<Operation | undefined> {
    const settings = await this.settings();
    if (settings.balance !== 'auto') {
      this.#roundsAbove = 0;
      return undefined;
    }
    const imbalance = imbalanceOf(await this.#inputs.placement.schedulerHosts());
    // Rounds during a run see hosts in motion: the count starts again once the run is over.
    if (this.#running || imbalance <= thresholdLevel(settings.threshold).actAbove) {
      this.#roundsAbove = 0;
      return undefined;
    }
    this.#roundsAbove += 1;
    if (this.#roundsAbove < ROUNDS_BEFORE_ACTING) return undefined;
    this.#roundsAbove = 0;
    const plan = await this.#plan(settings, 'auto');
    if (plan.proposal.moves.length > 0) return this.#start(plan, 'auto');
    await this.#recordRun({ at: new Date().toISOString(), trigger: 'auto', ...summary(plan.proposal), moves: [] });
    return undefined;
  }

  /** Starts the background rounds (the control plane process; tests call `round` themselves). */
  async start(): Promise<void> {
    this.#schedule((await this.settings()).intervalSeconds);
  }

  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #schedule(intervalSeconds: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(async () => {
      try {
        await this.round();
      } catch (error) {
        this.#logger?.warn({ err: error }, 'balancer round failed');
      }
      if (this.#timer) this.#schedule((await this.settings().catch(() => DEFAULT_CLUSTER_SETTINGS)).intervalSeconds);
    }, intervalSeconds * 1000);
    this.#timer.unref();
  }

  #refuseIfRunning(): void {
    if (this.#running)
      throw new NubisError(
        'CLUSTER_BALANCE_RUNNING',
        `A balancing run is under way${this.#running === 'starting' ? '' : ` (operation ${this.#running})`}; wait for it or cancel it`,
      );
  }

  async #plan(settings: ClusterSettings, trigger: BalanceRun['trigger']): Promise<Plan> {
    const inputs = await loadBalanceInputs(this.#inputs, trigger);
    const plan = planBalance({
      hosts: inputs.hosts,
      vms: inputs.vms,
      threshold: thresholdLevel(settings.threshold),
      maxMoves: settings.maxMoves,
      cooldownMs: settings.cooldownSeconds * 1000,
      nowMs: Date.now(),
      maxMoveTimeMs: MOVE_TIMEOUT_SECONDS * 1000,
      cost: inputs.cost,
    });
    const projectOf = new Map(inputs.vms.map((vm) => [vm.id, vm.project]));
    const proposal: BalanceProposal = {
      imbalanceBefore: round(plan.imbalanceBefore),
      imbalanceAfter: round(plan.imbalanceAfter),
      threshold: plan.threshold,
      outcome: plan.outcome,
      moves: plan.moves.map((move) => ({
        vm: move.vm,
        project: projectOf.get(move.vmId)!,
        from: move.from,
        to: move.to,
        benefit: round(move.benefit),
        imbalanceAfter: round(move.imbalanceAfter),
        cost: move.cost,
      })),
      held: plan.held,
      hosts: plan.hosts.map((host) => ({ host: host.host, before: roundLoad(host.before), after: roundLoad(host.after) })),
    };
    return { proposal, vmIds: plan.moves.map((move) => move.vmId) };
  }

  /** Runs the planned moves as one operation, one move at a time. */
  async #start(plan: Plan, trigger: BalanceRun['trigger']): Promise<Operation> {
    this.#refuseIfRunning();
    this.#running = 'starting';
    try {
      const at = new Date().toISOString();
      const operation = await this.#operations.start('cluster.balance', { type: 'cluster', id: 'cluster', name: 'cluster' }, async (op) => {
        const moves = await this.#runMoves(op, plan);
        const run: BalanceRun = {
          at,
          endedAt: new Date().toISOString(),
          trigger,
          operationId: op.id,
          ...summary(plan.proposal),
          imbalanceAfter: round(imbalanceOf(await this.#inputs.placement.schedulerHosts())),
          moves,
        };
        await this.#recordRun(run);
        return run;
      });
      this.#running = operation.id;
      void this.#operations
        .wait(operation.id)
        .catch(() => undefined)
        .finally(() => {
          if (this.#running === operation.id) this.#running = undefined;
        });
      return operation;
    } catch (error) {
      this.#running = undefined;
      throw error;
    }
  }

  /**
   * Each move as a live migration to its planned host (the migration re-checks every rule as it
   * starts). After a move that did not complete the plan no longer holds: the rest are not started.
   */
  async #runMoves(op: OperationContext, plan: Plan): Promise<MoveResult[]> {
    const { moves } = plan.proposal;
    await op.report(
      'balancing',
      `Imbalance ${plan.proposal.imbalanceBefore} above ${plan.proposal.threshold.actAbove}: ${moves.length} move(s) planned, to ${plan.proposal.imbalanceAfter}`,
      0.02,
      { proposal: plan.proposal },
    );
    const results: MoveResult[] = [];
    for (const [index, move] of moves.entries()) {
      if (op.signal.aborted || results.some((r) => r.status !== 'completed')) {
        results.push({ ...move, status: 'not started' });
        continue;
      }
      const outcome = await this.#move(op, plan.vmIds[index], move);
      results.push({ ...move, ...outcome });
      clusterMetrics.balancerMoves.inc({ outcome: outcome.status });
      const line = `${move.vm}: ${move.from} -> ${move.to} ${outcome.status}${outcome.error ? ` (${outcome.error})` : ''}`;
      await op.report('balancing', line, 0.02 + (0.96 * (index + 1)) / moves.length, results.at(-1));
    }
    return results;
  }

  /** One move: the migration's outcome; cancelling the run cancels the migration under way. */
  async #move(op: OperationContext, vmId: string, move: MoveResult): Promise<{ status: 'completed' | 'failed' | 'cancelled'; error?: string }> {
    try {
      const child = await this.#migrations.migrate(vmId, {
        to: move.to,
        strategy: 'auto',
        reason: 'balance',
        completionTimeoutSeconds: MOVE_TIMEOUT_SECONDS,
        onTimeout: 'abort',
      });
      const cancel = (): void => void this.#operations.cancel(child.id).catch(() => undefined);
      op.signal.addEventListener('abort', cancel, { once: true });
      const final = await this.#operations.wait(child.id).finally(() => op.signal.removeEventListener('abort', cancel));
      const status = final.status === 'succeeded' ? 'completed' : final.status === 'cancelled' ? 'cancelled' : 'failed';
      return { status, ...(final.error ? { error: final.error.message } : {}) };
    } catch (error) {
      return { status: 'failed', error: messageOf(error) };
    }
  }

  async #recordRun(run: BalanceRun): Promise<void> {
    const last_run = JSON.stringify(run);
    await this.#db
      .insertInto('cluster_settings')
      .values({
        id: 'cluster',
        balance: DEFAULT_CLUSTER_SETTINGS.balance,
        threshold: DEFAULT_CLUSTER_SETTINGS.threshold,
        interval_seconds: DEFAULT_CLUSTER_SETTINGS.intervalSeconds,
        cooldown_seconds: DEFAULT_CLUSTER_SETTINGS.cooldownSeconds,
        max_moves: DEFAULT_CLUSTER_SETTINGS.maxMoves,
        last_run,
        updated_at: new Date().toISOString(),
      })
      .onConflict((conflict) => conflict.column('id').doUpdateSet({ last_run }))
      .execute();
  }

  async #lastRun(): Promise<BalanceRun | undefined> {
    const row = await this.#db.selectFrom('cluster_settings').select('last_run').where('id', '=', 'cluster').executeTakeFirst();
    return row?.last_run ? (JSON.parse(row.last_run) as BalanceRun) : undefined;
  }
}

/** What a run keeps of its plan. */
function summary(proposal: BalanceProposal): Pick<BalanceRun, 'imbalanceBefore' | 'outcome'> {
  return { imbalanceBefore: proposal.imbalanceBefore, outcome: proposal.outcome };
}

function round(value: number): number {
  return Math.round(value * 10000) / 10000;
}

function roundLoad(load: { load: number; memory: number; cpu: number }): { load: number; memory: number; cpu: number } {
  return { load: round(load.load), memory: round(load.memory), cpu: round(load.cpu) };
}
