/** The shapes of a live migration: what is asked, how it is planned, what it measured, and one as it runs. */
import type { VmStatus } from '../agent-api/contract.ts';
import type { MigrationTlsCredentials } from '../compute/qemu/migration-tls.ts';
import type { DiskSpec, VmSpec } from '../compute/vm-spec.ts';
import type { HostsTable } from '../state/schema.ts';
import type { PlacementAction } from '../control/placement.ts';
import type { PlacementDecision } from '../control/scheduler.ts';

export type MigrationStrategy = 'precopy' | 'postcopy' | 'auto';

export interface MigrationRequest {
  to?: string;
  strategy: MigrationStrategy;
  /** The longest stop-and-copy the user accepts. Default 300 ms (QEMU's own limit). `auto` aims
   * lower first ({@link AUTO_TARGET_DOWNTIME_MS}) and widens towards this only if it must. */
  maxDowntimeMs?: number;
  /** Cap on the migration stream; default unlimited. */
  bandwidthMbps?: number;
  /** Deadline for the switch-over; then `onTimeout` applies. */
  completionTimeoutSeconds?: number;
  /** At the deadline: give up (the VM stays on its source) or switch to post-copy. Default:
   * post-copy when it is prepared for this migration, else abort. */
  onTimeout?: 'abort' | 'postcopy';
  /** TLS between the two QEMUs (migration-tls.ts); a cluster that requires it refuses a migration without. */
  tls?: boolean;
  /** Why the VM moves, for its placement record: a user's `migrate` unless a service says (never from the API). */
  reason?: PlacementAction;
}

/** The scheduler's decision for a migration, recorded with the VM's placement when it switches over. */
export interface MigrationPlacement {
  action: PlacementAction;
  actor?: string;
  decision: PlacementDecision;
}

/** How a migration is set up before it starts, and why. */
export interface MigrationPlan {
  /** `postcopy-ram` on both ends: the switch to post-copy stays possible, at the price of a
   * return-path handshake that lengthens a plain pre-copy's final phase. */
  postcopyPrepared: boolean;
  /** QEMU throttles the guest's vCPUs when pre-copy passes stop shrinking. */
  autoConverge: boolean;
  /** The stop-and-copy QEMU is first asked to fit in, and the most it may be widened to. */
  targetDowntimeMs: number;
  maxDowntimeMs: number;
  onTimeout: 'abort' | 'postcopy';
  reason: string;
  /** `auto` only: the guest's dirty rate sampled before the stream starts. */
  sampledDirtyRateBytesPerSec?: number;
  /** The link assumed before the stream measures it (the cap, the last measured, or a gigabit). */
  expectedBandwidthBytesPerSec: number;
}

/** The figures of a migration, as recorded and shown by `nubis vm migrations`. */
export interface MigrationFigures {
  memoryMb: number;
  totalTimeMs?: number;
  /** QEMU's downtime: from stopping the VM to the last byte handed to the stream. */
  downtimeMs?: number;
  /** What the guest lost: the source's STOP to the destination's RESUME. It adds what QEMU's
   * downtime leaves out: the destination draining the stream and loading the device state. */
  pausedMs?: number;
  transferredBytes?: number;
  passes?: number;
  postcopyRequests?: number;
  switchedToPostcopy: boolean;
  /** The largest vCPU throttle auto-converge applied, in percent. */
  throttlePercent?: number;
  /** How often a broken post-copy stream was recovered. */
  recoveries?: number;
  plan?: MigrationPlan;
  /** The link as measured from bytes sent over time, beside QEMU's own estimate. */
  bandwidth?: { measuredBytesPerSec: number; qemuBytesPerSec: number; capped: boolean };
  /** Made before the stream starts from the plan's dirty rate and link (`basis: plan`), and
   * refined once early in the first pass from what the stream measures (`basis: first-pass`);
   * a migration over before the refinement keeps the first one, so every migration has one. */
  prediction?: MigrationPrediction;
  /** Actual minus predicted total time, in percent of the actual. */
  predictionErrorPercent?: number;
  error?: string;
}

/** What the model expected of a migration, and from what. */
export interface MigrationPrediction {
  basis: 'plan' | 'first-pass';
  madeAtMs: number;
  dirtyRateBytesPerSec: number;
  bandwidthBytesPerSec: number;
  lambda: number;
  converges: boolean;
  route: 'precopy' | 'postcopy';
  predictedTotalMs?: number;
  predictedDowntimeMs?: number;
}

/** One migration as it runs: the request, the hosts and what was decided before anything moved. */
export interface MigrationRun {
  vmId: string;
  vmName: string;
  projectId: string;
  placement: MigrationPlacement;
  spec: VmSpec;
  source: HostsTable;
  destination: HostsTable;
  request: MigrationRequest;
  plan: MigrationPlan;
  figures: MigrationFigures;
  networkIds: string[];
  /** Lets go of the hold that keeps the VM's networks on the destination during the migration. */
  releaseNetworks: () => void;
  capabilities: Record<string, boolean>;
  /** Where the destination listens for the stream. */
  uri: string;
  sourceStatus: VmStatus;
  /** The dir-pool volumes copied to the destination, with their disk there. */
  mirrored: Array<{ diskId: string; pool: string; volume: string; target: DiskSpec; sizeBytes: number }>;
  destinationSpec: VmSpec;
  mirroredDiskIds: string[];
  mirrorTarget: { host: string; port: number };
  /** Each end's credentials when the stream runs over TLS. */
  tls?: { source: MigrationTlsCredentials; destination: MigrationTlsCredentials };
  /** True once the VM runs on the destination (post-copy or completion): nothing is rolled back then. */
  switchedOver: boolean;
}

/** What a checked migration starts from: the VM, the two hosts, the request and its plan. */
export type MigrationInput = Pick<
  MigrationRun,
  'vmId' | 'vmName' | 'projectId' | 'placement' | 'spec' | 'source' | 'destination' | 'request' | 'plan' | 'figures'
>;
