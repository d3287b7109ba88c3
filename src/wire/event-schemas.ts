/**
 * Wire types of the live views: the cluster-wide change stream (GET /v1/events) and the usage
 * graphs of VMs and hosts (GET /v1/{vms,hosts}/:ref/usage, POST /v1/hosts/:name/usage).
 * Shared by the API, the agents and the CLI.
 */
import { Type, type Static } from '@sinclair/typebox';
import { Count, Int32, ResourceId, ResourceName, Text, Timestamp } from './schemas.ts';

/** The types of resources the stream reports, in the order `?types=` lists them. */
export const CHANGE_TYPE_NAMES = ['vm', 'host', 'network', 'pool', 'volume', 'operation', 'migration', 'desktop', 'desktop-pool', 'backup-schedule'] as const;

export const EventsQuery = Type.Object(
  {
    types: Type.Optional(
      Type.String({
        pattern: `^(${CHANGE_TYPE_NAMES.join('|')})(,(${CHANGE_TYPE_NAMES.join('|')}))*$`,
        maxLength: 128,
        description: `Only these types, comma-separated: ${CHANGE_TYPE_NAMES.join(', ')}`,
      }),
    ),
    lastEventId: Type.Optional(
      Type.String({ pattern: '^[a-z0-9-]{1,64}$', maxLength: 64, description: 'Resume after this event (as the Last-Event-ID header does)' }),
    ),
  },
  { additionalProperties: false },
);

export const ChangeEventBody = Type.Object(
  {
    seq: Count(),
    time: Timestamp,
    type: Type.Union(CHANGE_TYPE_NAMES.map((name) => Type.Literal(name))),
    action: Type.Union([Type.Literal('created'), Type.Literal('updated'), Type.Literal('deleted')]),
    id: Text(200),
    name: Text(200),
    project: Type.Union([Type.String({ pattern: ResourceName.pattern, maxLength: 63 }), Type.Null()], {
      description: 'The project of a project resource; null for hosts and pools',
    }),
    resource: Type.Optional(Type.Unknown({ description: 'The resource as its GET shows it; absent when deleted' })),
  },
  {
    $id: 'ChangeEvent',
    description:
      'Sent as `event: change` with `id: <epoch>-<seq>`; `event: reset` (data {"reason"}) when the resume point is unknown: refetch everything. A comment `: keep-alive` every 15 s',
  },
);
export type ChangeEventBody = Static<typeof ChangeEventBody>;

/** What a usage graph spans: the last hour at 10 s, or the last day at 5 min. */
export const UsageRange = Type.Union([Type.Literal('hour'), Type.Literal('day')], { default: 'hour' });
export type UsageRange = Static<typeof UsageRange>;
export const UsageQuery = Type.Object({ range: UsageRange, project: Type.Optional(ResourceName) }, { additionalProperties: false });
export const HostUsageQuery = Type.Object({ range: UsageRange }, { additionalProperties: false });

/** The metrics a usage series carries, each a rate or a level. */
export const USAGE_METRICS = ['cpu', 'memoryBytes', 'diskReadBytesPerSec', 'diskWriteBytesPerSec', 'netRxBytesPerSec', 'netTxBytesPerSec'] as const;
export type UsageMetric = (typeof USAGE_METRICS)[number];

const Points = Type.Array(Type.Union([Type.Number(), Type.Null()]), { maxItems: 400, description: 'One value per timestamp; null where nothing was reported' });

export const UsageSeries = Type.Object(
  {
    range: UsageRange,
    stepSeconds: Count(),
    timestamps: Type.Array(Timestamp, { maxItems: 400 }),
    /** `cpu` is a fraction of the VM's vCPUs (of the host's CPUs for a host), 0..1. */
    average: Type.Object(Object.fromEntries(USAGE_METRICS.map((metric) => [metric, Points])) as Record<UsageMetric, typeof Points>),
    /** Per 5-minute point of the day range: the highest 10 s value in it. */
    max: Type.Optional(Type.Object(Object.fromEntries(USAGE_METRICS.map((metric) => [metric, Points])) as Record<UsageMetric, typeof Points>)),
    memoryTotalBytes: Type.Optional(Type.Number({ minimum: 0 })),
  },
  { $id: 'UsageSeries' },
);
export type UsageSeries = Static<typeof UsageSeries>;

const Counter = Type.Number({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER });

/** One VM's counters at one instant, as its host agent read them. */
export const VmUsageSample = Type.Object(
  {
    vm: ResourceId,
    /** CPU time of its QEMU process, in seconds (utime + stime). */
    cpuSeconds: Counter,
    cpus: Int32(1, 1024),
    /** QEMU's resident memory. */
    memoryBytes: Counter,
    diskReadBytes: Counter,
    diskWriteBytes: Counter,
    netRxBytes: Counter,
    netTxBytes: Counter,
    /** The QEMU process's pid: a new one means the counters started again. */
    pid: Int32(1, 2 ** 31 - 1),
  },
  { additionalProperties: false },
);
export type VmUsageSample = Static<typeof VmUsageSample>;

/** What an agent posts every 10 s: its host's counters and its VMs'. */
export const HostUsageReport = Type.Object(
  {
    at: Timestamp,
    host: Type.Object(
      {
        /** Jiffies-derived seconds from /proc/stat: all CPU time, and the idle part of it. */
        cpuTotalSeconds: Counter,
        cpuIdleSeconds: Counter,
        cpus: Int32(1, 4096),
        memoryUsedBytes: Counter,
        memoryTotalBytes: Counter,
      },
      { additionalProperties: false },
    ),
    vms: Type.Array(VmUsageSample, { maxItems: 1000 }),
  },
  { additionalProperties: false },
);
export type HostUsageReport = Static<typeof HostUsageReport>;
