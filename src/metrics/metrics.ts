/**
 * The metrics that Nubis's services feed as things happen: a live migration ends, high
 * availability restarts a VM, the balancer moves one. They are module singletons, so whoever acts
 * imports `clusterMetrics` and counts, with no reference to the control plane that serves them;
 * each control plane's registry (control-plane-metrics.ts) registers them for GET /metrics. This
 * file imports nothing of Nubis, so every layer may use it.
 *
 * Names follow Prometheus' conventions (prometheus.io/docs/practices/naming): the `nubis_` prefix,
 * base units (seconds, bytes) in the name, `_total` on counters. Labels take values from small
 * fixed sets only (an outcome, a strategy): never a VM or host name here, never free text.
 */
import { Counter, Histogram } from 'prom-client';

/** Bucket bounds (seconds) of a VM's outage during a failover: detected dead host to running elsewhere. */
const FAILOVER_BUCKETS_SECONDS = [1, 2, 5, 10, 20, 30, 60, 120, 300, 600];
/** Bucket bounds (seconds) of a whole live migration, from the first byte sent to activation. */
const MIGRATION_BUCKETS_SECONDS = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800];
/** Bucket bounds (seconds) of a guest's pause at switch-over: QEMU's default limit is 300 ms. */
const BLACKOUT_BUCKETS_SECONDS = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10];
/** Bucket bounds (bytes) of what a migration sent: 16 MiB to 256 GiB, by fours. */
const MIGRATION_BUCKETS_BYTES = [2 ** 24, 2 ** 26, 2 ** 28, 2 ** 30, 2 ** 32, 2 ** 34, 2 ** 36, 2 ** 38];

/** How a live migration ended, as `vm_migrations.status` records it. */
export type MigrationOutcome = 'completed' | 'failed' | 'cancelled';

/** The figures of a finished migration that the metrics read (a subset of MigrationFigures). */
export interface MigrationSample {
  strategy: string;
  outcome: MigrationOutcome;
  figures: { totalTimeMs?: number; downtimeMs?: number; pausedMs?: number; transferredBytes?: number };
}

/**
 * Counters and histograms fed by the code that acts. None is registered anywhere on creation
 * (`registers: []`): each control plane's registry takes them in, so two control planes in one
 * process (tests) never collide on a name.
 */
export const clusterMetrics = {
  /**
   * High availability: VMs of a dead host restarted elsewhere. `outcome`: `restarted` (running on
   * another host), `failed` (the restart failed), `skipped` (nowhere to place it, or its policy
   * says no). Incremented once per VM the HA service tried.
   */
  haRestarts: new Counter({
    name: 'nubis_ha_restarts_total',
    help: 'VMs of a failed host that high availability restarted on another host, by outcome (restarted, failed, skipped)',
    labelNames: ['outcome'] as const,
    registers: [],
  }),
  /** High availability: per restarted VM, the seconds from its host being declared dead to the VM running again. */
  haFailoverSeconds: new Histogram({
    name: 'nubis_ha_failover_seconds',
    help: 'Seconds from a host being declared failed to each of its VMs running again elsewhere',
    buckets: FAILOVER_BUCKETS_SECONDS,
    registers: [],
  }),
  /** The balancer: VM moves it decided, by `outcome` (`completed`, `failed`, `cancelled`). */
  balancerMoves: new Counter({
    name: 'nubis_balancer_moves_total',
    help: 'Live migrations the balancer started to even out the hosts, by outcome (completed, failed, cancelled)',
    labelNames: ['outcome'] as const,
    registers: [],
  }),
  /** Live migrations that ended, by strategy and outcome (observeMigration feeds it). */
  migrations: new Counter({
    name: 'nubis_migrations_total',
    help: 'Live migrations that ended, by strategy (precopy, postcopy, auto) and outcome (completed, failed, cancelled)',
    labelNames: ['strategy', 'outcome'] as const,
    registers: [],
  }),
  migrationDurationSeconds: new Histogram({
    name: 'nubis_migration_duration_seconds',
    help: "Live migrations' total time as QEMU measured it, by strategy and outcome",
    labelNames: ['strategy', 'outcome'] as const,
    buckets: MIGRATION_BUCKETS_SECONDS,
    registers: [],
  }),
  migrationDowntimeSeconds: new Histogram({
    name: 'nubis_migration_downtime_seconds',
    help: "Live migrations' downtime as QEMU measured it: from stopping the VM to the last byte handed to the stream",
    labelNames: ['strategy', 'outcome'] as const,
    buckets: BLACKOUT_BUCKETS_SECONDS,
    registers: [],
  }),
  migrationBlackoutSeconds: new Histogram({
    name: 'nubis_migration_blackout_seconds',
    help: "Live migrations' blackout: what the guest lost, from the source's STOP to the destination's RESUME",
    labelNames: ['strategy', 'outcome'] as const,
    buckets: BLACKOUT_BUCKETS_SECONDS,
    registers: [],
  }),
  migrationTransferredBytes: new Histogram({
    name: 'nubis_migration_transferred_bytes',
    help: 'Bytes a live migration sent over its stream (memory and device state), by strategy and outcome',
    labelNames: ['strategy', 'outcome'] as const,
    buckets: MIGRATION_BUCKETS_BYTES,
    registers: [],
  }),
} as const;

/**
 * Counts a live migration that ended and observes the figures it measured; a figure it did not
 * get (a migration that failed early) is left out of its histogram. Called by the migration
 * service once per migration, when it records the end (`vm_migrations`).
 */
export function observeMigration(sample: MigrationSample): void {
  const labels = { strategy: sample.strategy, outcome: sample.outcome };
  const { totalTimeMs, downtimeMs, pausedMs, transferredBytes } = sample.figures;
  clusterMetrics.migrations.inc(labels);
  if (totalTimeMs !== undefined) clusterMetrics.migrationDurationSeconds.observe(labels, totalTimeMs / 1000);
  if (downtimeMs !== undefined) clusterMetrics.migrationDowntimeSeconds.observe(labels, downtimeMs / 1000);
  if (pausedMs !== undefined) clusterMetrics.migrationBlackoutSeconds.observe(labels, pausedMs / 1000);
  if (transferredBytes !== undefined) clusterMetrics.migrationTransferredBytes.observe(labels, transferredBytes);
}
