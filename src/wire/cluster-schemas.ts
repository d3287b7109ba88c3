/**
 * Schemas of the cluster: the balancer's settings, its proposal of moves (each with its benefit
 * and predicted cost), the outcome of a run, and the cluster's imbalance now.
 */
import { Type, type Static } from '@sinclair/typebox';
import { ByteCount, Count, Int32, List, ResourceId, ResourceName, Text, Timestamp } from './schemas.ts';

export const BalanceMode = Type.Union([Type.Literal('auto'), Type.Literal('manual'), Type.Literal('off')], {
  description: 'auto: the background balancer moves VMs; manual: only `nubis cluster balance`; off: no balancing moves (dry runs still answer)',
});

const Threshold = Int32(1, 5, { description: '1 (careful: act above 0.30 imbalance) .. 5 (eager: act above 0.05); default 3 (0.15)' });
const IntervalSeconds = Int32(10, 86400, { description: 'Seconds between two rounds of the background balancer (default 300)' });
const CooldownSeconds = Int32(60, 604800, { description: 'A VM that moved (for any reason) is not moved again by the balancer for this long (default 3600)' });
const MaxMoves = Int32(1, 32, { description: 'The most moves one run makes (default 8)' });
const MigrationTlsPolicy = Type.Union([Type.Literal('optional'), Type.Literal('required')], {
  description: 'optional: a live migration runs over TLS when asked (tls: true); required: a migration without TLS is refused (default optional)',
});

export const ClusterSettings = Type.Object({
  balance: BalanceMode,
  threshold: Threshold,
  intervalSeconds: IntervalSeconds,
  cooldownSeconds: CooldownSeconds,
  maxMoves: MaxMoves,
  migrationTls: MigrationTlsPolicy,
});
export type ClusterSettings = Static<typeof ClusterSettings>;

export const ClusterUpdateRequest = Type.Object(
  {
    balance: Type.Optional(BalanceMode),
    threshold: Type.Optional(Threshold),
    intervalSeconds: Type.Optional(IntervalSeconds),
    cooldownSeconds: Type.Optional(CooldownSeconds),
    maxMoves: Type.Optional(MaxMoves),
    migrationTls: Type.Optional(MigrationTlsPolicy),
  },
  { additionalProperties: false },
);

export const BalanceRequest = Type.Object(
  { dryRun: Type.Boolean({ default: false, description: 'Only propose: nothing moves, the answer is the proposal' }) },
  { additionalProperties: false },
);

const Share = (description: string) => Type.Number({ minimum: 0, maximum: 1000, description });
const Benefit = Type.Number({ minimum: -1000, maximum: 1000, description: 'Imbalance before minus imbalance after' });

export const HostLoad = Type.Object({
  load: Share('The larger of the two shares'),
  memory: Share('Allocated memory / memory capacity (reserve and overcommit ratio counted)'),
  cpu: Share('Allocated vCPUs / vCPU capacity (cores times the overcommit ratio)'),
});

export const ThresholdLevel = Type.Object({
  level: Threshold,
  actAbove: Share('A run acts only when the imbalance is above this'),
  target: Share('A run stops once the imbalance is at or below this'),
  minBenefit: Share('The least benefit a move must bring on three hosts (times 3/n on n hosts)'),
  costFactor: Share('Bytes a move may send per unit of (3/n-scaled) benefit, in mean host memory capacities'),
});

export const MigrationCost = Type.Object({
  converges: Type.Boolean({ description: 'Pre-copy is predicted to converge' }),
  lambda: Type.Number({ minimum: 0, maximum: 1e9, description: 'Dirty rate / link' }),
  timeMs: Type.Optional(
    Type.Integer({ format: 'int64', minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: 'Predicted time in ms (when it converges)' }),
  ),
  bytes: Type.Optional(ByteCount({ description: 'Predicted bytes on the link: local disks, then every pre-copy pass' })),
  dirtyRateBytesPerSec: ByteCount(),
  dirtyRateSource: Type.Union([Type.Literal('sampled'), Type.Literal('assumed')], { description: 'Sampled by its last migration, or assumed' }),
  linkBytesPerSec: ByteCount(),
  linkSource: Type.Union([Type.Literal('measured'), Type.Literal('assumed')], {
    description: 'Measured by the last migration between the hosts, or assumed (1 Gbit/s)',
  }),
  diskBytes: ByteCount({ description: 'Local (dir-pool) disks mirrored with it' }),
});

export const BalanceMove = Type.Object({
  vm: ResourceName,
  project: ResourceName,
  from: Text(63),
  to: Text(63),
  benefit: Benefit,
  imbalanceAfter: Share('The imbalance once this and the moves before it are made'),
  cost: MigrationCost,
  status: Type.Optional(Text(32, { description: 'In a run: completed, failed, cancelled or not started' })),
  error: Type.Optional(Text(4096)),
});

export const BalanceOutcome = Type.Union(
  [Type.Literal('below-threshold'), Type.Literal('balanced'), Type.Literal('no-move-pays'), Type.Literal('max-moves'), Type.Literal('too-few-hosts')],
  { description: 'Why the plan stops where it does' },
);

export const BalanceProposal = Type.Object(
  {
    imbalanceBefore: Share('Standard deviation of the online hosts’ loads now'),
    imbalanceAfter: Share('The same once the proposed moves are made'),
    threshold: ThresholdLevel,
    outcome: BalanceOutcome,
    moves: List(BalanceMove),
    held: List(Type.Object({ vm: ResourceName, host: Text(63), reason: Text(4096) }), {
      description: 'VMs of the most loaded hosts that stay, with why',
    }),
    hosts: List(Type.Object({ host: Text(63), before: HostLoad, after: HostLoad })),
  },
  { $id: 'BalanceProposal' },
);
export type BalanceProposal = Static<typeof BalanceProposal>;

export const BalanceRun = Type.Object({
  at: Timestamp,
  endedAt: Type.Optional(Timestamp),
  trigger: Type.Union([Type.Literal('manual'), Type.Literal('auto')]),
  operationId: Type.Optional(ResourceId),
  imbalanceBefore: Share('When the run was planned'),
  imbalanceAfter: Type.Optional(Share('Measured once the run ended')),
  outcome: BalanceOutcome,
  moves: List(BalanceMove),
});
export type BalanceRun = Static<typeof BalanceRun>;

export const ClusterView = Type.Object(
  {
    settings: ClusterSettings,
    imbalance: Type.Object({
      value: Share('Standard deviation of the online hosts’ loads'),
      actAbove: Share('The threshold’s level to act'),
      target: Share('Where a run stops'),
      roundsAbove: Count({ description: 'Consecutive background rounds above the threshold (auto acts at 3)' }),
      hosts: List(Type.Object({ host: Text(63), status: Text(16), load: HostLoad })),
    }),
    running: Type.Optional(ResourceId),
    lastRun: Type.Optional(BalanceRun),
  },
  { $id: 'ClusterView' },
);
export type ClusterView = Static<typeof ClusterView>;
