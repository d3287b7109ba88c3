/**
 * Stages 3-5 of a live migration, watched from the control plane: the source streams the VM's
 * memory to the destination (pre-copy passes, then stop-and-copy, or post-copy), and every look
 * at `query-migrate` refines the figures, reports the pass, widens the downtime target, and
 * decides on post-copy. One object per migration, so the watch's state is in one place.
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { PauseTimes, QemuMigrationStatus, QemuRamStats } from '../agent-api/contract.ts';
import type { HostRegistry } from '../control/hosts.ts';
import type { OperationContext } from '../control/operations.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import type { Revert } from '../core/revert.ts';
import type { MigrationPlan, MigrationPrediction, MigrationRun, MigrationStrategy } from './migration-types.ts';
import { recoverPostcopy } from './postcopy-recovery.ts';
import { downtimeTargetForPass, predictPostcopyMs, predictPrecopy, qemuDowntimeLimitFor, RateMeter } from './precopy-model.ts';

/** Pre-copy passes `auto` allows before it switches to post-copy (when prepared). */
const AUTO_MAX_PASSES = 10;
/** No byte moved for this long: the link or an end is gone. */
export const STALL_MS = 10_000;
/** How often the control plane looks at a migration. */
export const POLL_MS = 200;

/** What the stream's watch keeps between two looks at `query-migrate`. */
interface StreamWatch {
  startedAt: number;
  deadline: number;
  link: RateMeter;
  scan: RateMeter;
  lastBytes: number;
  lastProgressAt: number;
  /** The downtime limit QEMU was last given. */
  qemuLimitMs: number;
}

/** One look at `query-migrate`, in the units Nubis reasons in. */
interface StreamSample {
  now: number;
  ram: QemuRamStats;
  passes: number;
  dirtyRate: number;
  bandwidth: number;
  qemuBandwidth: number;
}

export class MigrationStream {
  readonly #hosts: HostRegistry;
  readonly op: OperationContext;
  readonly migration: MigrationRun;

  constructor(hosts: HostRegistry, op: OperationContext, run: MigrationRun) {
    this.#hosts = hosts;
    this.op = op;
    this.migration = run;
  }

  /**
   * Stages 3-5: pre-copy passes, then stop-and-copy, or post-copy; resolves when QEMU reports the
   * migration complete, with the figures filled in. `run.switchedOver` turns true once the VM
   * runs on the destination: from then on nothing is rolled back.
   */
  async run(revert: Revert): Promise<void> {
    const { op, migration: run } = this;
    const { vmId, source, request, plan, figures, uri, capabilities, mirroredDiskIds, tls } = run;
    await this.#hosts.agent(source).migrate(
      vmId,
      {
        uri,
        capabilities,
        downtimeLimitMs: plan.targetDowntimeMs,
        mirroredDisks: mirroredDiskIds,
        ...(tls ? { tls: tls.source } : {}),
        ...(request.bandwidthMbps ? { maxBandwidthBytesPerSec: request.bandwidthMbps * 1_000_000 } : {}),
      },
      { signal: op.signal },
    );
    revert.add(`cancel the stream on ${source.name}`, () => this.#hosts.agent(source).cancelMigration(vmId));
    const startedAt = Date.now();
    const watch: StreamWatch = {
      startedAt,
      deadline: startedAt + (request.completionTimeoutSeconds ?? 300) * 1000,
      link: new RateMeter(),
      scan: new RateMeter(),
      lastBytes: -1,
      lastProgressAt: startedAt,
      qemuLimitMs: plan.targetDowntimeMs,
    };
    // A first prediction before any byte moves, from the plan's figures, so that a migration
    // over before the first-pass samples settle (an idle guest can finish in 300 ms) has one.
    const memoryBytes = figures.memoryMb * 2 ** 20;
    figures.prediction = this.#predict({
      basis: 'plan',
      elapsedMs: 0,
      pass: 1,
      remaining: memoryBytes,
      scanRate: 0,
      dirtyRate: plan.sampledDirtyRateBytesPerSec ?? 0,
      bandwidth: plan.expectedBandwidthBytesPerSec,
      memoryBytes,
      plan,
      strategy: request.strategy,
      inPostcopy: request.strategy === 'postcopy',
    });
    for (;;) {
      const status = await this.#hosts.agent(source).migrationStatus(vmId, { signal: op.signal });
      const sample = this.#sample(run, watch, status);
      if (status.status === 'completed') break;
      if (status.status === 'failed' || status.status === 'cancelled')
        throw new NubisError('MIGRATION_FAILED', `QEMU reports the migration ${status.status}: ${status['error-desc'] ?? 'no reason given'}`);
      if (status.status === 'postcopy-paused' || (status.status === 'postcopy-active' && sample.now - watch.lastProgressAt > STALL_MS)) {
        run.switchedOver = true;
        await recoverPostcopy(this.#hosts, op, { vmId, source, destination: run.destination, figures });
        watch.lastProgressAt = Date.now();
      } else if (status.status === 'postcopy-active' || status.status === 'postcopy-recover') {
        run.switchedOver = true;
        await this.#reportPostcopy(op, run, sample);
      } else if (status.status === 'device' || status.status === 'pre-switchover') {
        await op.report('stop-and-copy', 'Stop-and-copy: the last dirty pages and the device state', 0.9);
      } else if (status.status === 'active') {
        await this.#onPrecopyPass(op, run, watch, sample);
      }
      // Closer looks in the first second, so that even a short migration gets its first-pass refinement.
      await delay(sample.now - startedAt < 1000 ? POLL_MS / 2 : POLL_MS, undefined, { signal: op.signal });
    }
    run.switchedOver = true;
    await this.#recordOutcome(run);
  }

  /** Reads one `query-migrate` into the figures: the link and scan rates, the throttle, and the prediction once it can be refined. */
  #sample(run: MigrationRun, watch: StreamWatch, status: QemuMigrationStatus): StreamSample {
    const { figures, request, plan } = run;
    const now = Date.now();
    const ram = status.ram ?? {};
    const pageSize = ram['page-size'] ?? 4096;
    const passes = ram['dirty-sync-count'] ?? 0;
    const dirtyRate = (ram['dirty-pages-rate'] ?? 0) * pageSize;
    if (ram.transferred !== undefined) {
      watch.link.add(now, ram.transferred);
      if (ram.transferred !== watch.lastBytes) [watch.lastBytes, watch.lastProgressAt] = [ram.transferred, now];
    }
    watch.scan.add(now, ((ram.normal ?? 0) + (ram.duplicate ?? 0)) * pageSize);
    const bandwidth = watch.link.rate();
    const qemuBandwidth = ((ram.mbps ?? 0) * 1_000_000) / 8;
    if (bandwidth > 0)
      figures.bandwidth = {
        measuredBytesPerSec: Math.round(bandwidth),
        qemuBytesPerSec: Math.round(qemuBandwidth),
        capped: request.bandwidthMbps !== undefined,
      };
    figures.throttlePercent = Math.max(figures.throttlePercent ?? 0, status['cpu-throttle-percentage'] ?? 0) || undefined;
    // A pre-copy prediction waits for 300 ms of samples, so that the first pass's pace has
    // settled; a post-copy one needs only the link rate.
    const settled = watch.link.spanMs() >= (status.status === 'active' ? 300 : 0);
    if (figures.prediction?.basis !== 'first-pass' && bandwidth > 0 && settled && ram.remaining !== undefined && status.status !== 'completed') {
      figures.prediction = this.#predict({
        basis: 'first-pass',
        elapsedMs: now - watch.startedAt,
        pass: Math.max(1, passes),
        remaining: ram.remaining,
        scanRate: watch.scan.rate(),
        dirtyRate: dirtyRate || plan.sampledDirtyRateBytesPerSec || 0,
        bandwidth,
        memoryBytes: figures.memoryMb * 2 ** 20,
        plan,
        strategy: request.strategy,
        inPostcopy: status.status !== 'active',
      });
    }
    return { now, ram, passes, dirtyRate, bandwidth, qemuBandwidth };
  }

  /**
   * Post-copy under way. Until the destination has resumed the VM it is still loading the device
   * state: a link lost in that window ends the destination QEMU (QEMU recovers only a running
   * post-copy), which is why post-copy is reported only from the RESUME on. Read from the agent,
   * not QEMU: in-band QMP on a post-copy destination may hang.
   */
  async #reportPostcopy(op: OperationContext, run: MigrationRun, { ram }: StreamSample): Promise<void> {
    const { destination } = run;
    const resumed = (
      await this.#hosts
        .agent(destination)
        .pauseTimes(run.vmId, { timeoutMs: 5_000 })
        .catch((): PauseTimes => ({}))
    ).resumedAtMs;
    if (!resumed) return op.report('switching', `Handing the device state over to ${destination.name}`, 0.88);
    await op.report(
      'postcopy',
      `Post-copy: the VM runs on ${destination.name} and pulls its last pages (${ram['postcopy-requests'] ?? 0} requests), ${mib(ram.remaining)} left`,
      0.9,
      { remainingBytes: ram.remaining, postcopyRequests: ram['postcopy-requests'] },
    );
  }

  /**
   * One look at a pre-copy pass: the destination must still answer and bytes must still move;
   * the pass is reported; the downtime target widens while passes go on; and post-copy is
   * switched to when the plan says so.
   */
  async #onPrecopyPass(op: OperationContext, run: MigrationRun, watch: StreamWatch, sample: StreamSample): Promise<void> {
    const { vmId, source, destination, request, plan, figures } = run;
    const { now, ram, passes, bandwidth, qemuBandwidth } = sample;
    // A lost destination agent fails the migration now, while the VM can still stay where it is.
    await this.#hosts
      .agent(destination)
      .pauseTimes(vmId, { timeoutMs: 5_000, signal: op.signal })
      .catch((error) => {
        throw new NubisError('MIGRATION_DESTINATION_LOST', `The destination ${destination.name} stopped answering: ${messageOf(error)}`);
      });
    if (now - watch.lastProgressAt > STALL_MS) {
      throw new NubisError('MIGRATION_STALLED', `No byte reached ${destination.name} for ${STALL_MS / 1000} s (is the link between the hosts down?)`);
    }
    const dirty = sample.dirtyRate || plan.sampledDirtyRateBytesPerSec || 0;
    const progress = ram.transferred !== undefined && ram.remaining !== undefined ? ram.transferred / (ram.transferred + ram.remaining) : 0;
    await op.report(
      'precopy',
      `Pass ${Math.max(1, passes)}: ${mib(ram.transferred)} sent, ${mib(ram.remaining)} remaining, dirty rate ${mib(dirty)}/s, link ${mib(bandwidth)}/s`,
      0.1 + progress * 0.75,
      {
        pass: Math.max(1, passes),
        transferredBytes: ram.transferred,
        remainingBytes: ram.remaining,
        dirtyRateBytesPerSec: dirty,
        bandwidthBytesPerSec: bandwidth,
        ...(figures.throttlePercent ? { throttlePercent: figures.throttlePercent } : {}),
      },
    );
    // Widen the downtime target, step by step, while passes go on without converging; and tell
    // QEMU the limit that, with its under-estimate of the link, means that target (`precopy`
    // keeps QEMU's own semantics: the user's limit goes to QEMU as it is).
    const targetMs = downtimeTargetForPass(plan.targetDowntimeMs, plan.maxDowntimeMs, passes);
    const limit = request.strategy === 'auto' ? qemuDowntimeLimitFor(targetMs, bandwidth, qemuBandwidth) : targetMs;
    if (Math.abs(limit - watch.qemuLimitMs) > watch.qemuLimitMs * 0.1) {
      await this.#hosts
        .agent(source)
        .setMigrationParameters(vmId, { downtimeLimitMs: limit }, { signal: op.signal })
        .catch(() => undefined);
      watch.qemuLimitMs = limit;
    }
    if (plan.postcopyPrepared && !figures.switchedToPostcopy) await this.#maybeSwitchToPostcopy(op, run, watch, sample);
    if (now > watch.deadline && !figures.switchedToPostcopy) {
      throw new NubisError(
        'MIGRATION_TIMEOUT',
        `The migration did not reach its switch-over within ${request.completionTimeoutSeconds ?? 300} s; try --strategy auto, a larger --max-downtime, or --on-timeout postcopy`,
      );
    }
  }

  /** The post-copy decision: for `auto` once the first full pass has measured the dirty rate; at the completion timeout when that is its action. */
  async #maybeSwitchToPostcopy(
    op: OperationContext,
    run: MigrationRun,
    watch: StreamWatch,
    { now, ram, passes, dirtyRate, bandwidth }: StreamSample,
  ): Promise<void> {
    const { request, plan, figures } = run;
    const outlook = predictPrecopy({
      remainingBytes: ram.remaining ?? 0,
      scanRateBytesPerSec: bandwidth,
      dirtyRateBytesPerSec: dirtyRate,
      bandwidthBytesPerSec: bandwidth,
      memoryBytes: figures.memoryMb * 2 ** 20,
      downtimeLimitMs: plan.maxDowntimeMs,
    });
    const afterFirstPass = passes >= 2;
    const why =
      now > watch.deadline && plan.onTimeout === 'postcopy'
        ? `the ${request.completionTimeoutSeconds ?? 300} s completion timeout passed`
        : request.strategy === 'postcopy'
          ? 'as asked'
          : request.strategy === 'auto' && afterFirstPass && !outlook.converges
            ? `pre-copy does not converge (dirty rate / link = ${outlook.lambda.toFixed(2)})`
            : request.strategy === 'auto' && passes > AUTO_MAX_PASSES
              ? `still not done after ${AUTO_MAX_PASSES} passes`
              : undefined;
    if (!why) return;
    await op.report('switching', `Switching to post-copy: ${why}`, 0.85, { lambda: outlook.lambda });
    await this.#hosts.agent(run.source).startPostcopy(run.vmId, { signal: op.signal });
    figures.switchedToPostcopy = true;
  }

  /** The figures of a completed migration, from QEMU's own account of it. */
  async #recordOutcome(run: MigrationRun): Promise<void> {
    const { figures } = run;
    let status = await this.#hosts.agent(run.source).migrationStatus(run.vmId);
    // QEMU marks the migration completed a moment before it fills in the times: ask again.
    for (let i = 0; i < 20 && !status['total-time']; i++) {
      await delay(50);
      status = await this.#hosts.agent(run.source).migrationStatus(run.vmId);
    }
    figures.totalTimeMs = status['total-time'];
    figures.downtimeMs = status.downtime;
    figures.transferredBytes = status.ram?.transferred;
    figures.passes = status.ram?.['dirty-sync-count'];
    figures.postcopyRequests = status.ram?.['postcopy-requests'];
    if (figures.prediction?.predictedTotalMs && figures.totalTimeMs) {
      figures.predictionErrorPercent = Math.round(((figures.totalTimeMs - figures.prediction.predictedTotalMs) / figures.totalTimeMs) * 100);
    }
  }

  /**
   * The prediction recorded with the migration: the rest of the first pass at the rate it goes
   * through memory, then the model's pre-copy passes, or (when post-copy will be used) the
   * dirty set pulled once over the link.
   */
  #predict(p: {
    basis: MigrationPrediction['basis'];
    elapsedMs: number;
    pass: number;
    remaining: number;
    scanRate: number;
    dirtyRate: number;
    bandwidth: number;
    memoryBytes: number;
    plan: MigrationPlan;
    strategy: MigrationStrategy;
    inPostcopy: boolean;
  }): MigrationPrediction {
    // The targets QEMU will really be given, pass by pass (auto's tight start, widened).
    const model = predictPrecopy({
      remainingBytes: p.remaining,
      scanRateBytesPerSec: p.scanRate,
      dirtyRateBytesPerSec: p.dirtyRate,
      bandwidthBytesPerSec: p.bandwidth,
      memoryBytes: p.memoryBytes,
      downtimeLimitMs: p.plan.targetDowntimeMs,
      maxDowntimeLimitMs: p.plan.maxDowntimeMs,
      pass: p.pass,
    });
    const base = {
      basis: p.basis,
      madeAtMs: p.elapsedMs,
      dirtyRateBytesPerSec: Math.round(p.dirtyRate),
      bandwidthBytesPerSec: Math.round(p.bandwidth),
      lambda: Number(model.lambda.toFixed(3)),
      converges: model.converges,
    };
    if (p.inPostcopy || (p.plan.postcopyPrepared && p.strategy === 'postcopy')) {
      // Post-copy from (nearly) the start: the rest of memory crosses once, at the pace of the scan.
      return { ...base, route: 'postcopy', predictedTotalMs: Math.round(p.elapsedMs + (p.remaining / Math.max(p.scanRate, p.bandwidth)) * 1000) };
    }
    if (p.plan.postcopyPrepared && !model.converges) {
      const firstPassMs = (p.remaining / Math.max(p.scanRate, p.bandwidth)) * 1000;
      const dirtyAfterFirstPass = Math.min(p.dirtyRate * (firstPassMs / 1000), p.memoryBytes);
      return { ...base, route: 'postcopy', predictedTotalMs: Math.round(p.elapsedMs + firstPassMs + predictPostcopyMs(dirtyAfterFirstPass, p.bandwidth)) };
    }
    return {
      ...base,
      route: 'precopy',
      ...(model.converges ? { predictedTotalMs: p.elapsedMs + (model.remainingTimeMs ?? 0), predictedDowntimeMs: model.downtimeMs } : {}),
    };
  }
}

/** Bytes as MiB with one decimal, for messages. */
export function mib(bytes: number | undefined): string {
  return bytes === undefined ? '?' : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
