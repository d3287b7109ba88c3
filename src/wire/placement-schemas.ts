/**
 * Schemas of placement: host and pool labels, placement groups, project requirements, the
 * scheduler's decision and a VM's placement history.
 */
import { Type, type Static } from '@sinclair/typebox';
import { LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN, MAX_LABELS } from './label-format.ts';
import { Count, Int32, List, ResourceId, ResourceName, Text, Timestamp } from './schemas.ts';

export { Labels } from './schemas.ts';

/** Labels to set: an empty value removes the key. */
export const LabelChange = Type.Record(
  Type.String({ pattern: LABEL_KEY_PATTERN, maxLength: 127 }),
  Type.String({ pattern: `(${LABEL_VALUE_PATTERN})|^$`, maxLength: 63 }),
  { maxProperties: MAX_LABELS, description: 'Labels to set; an empty value removes the label' },
);

const Ratio = (description: string) => Type.Number({ minimum: 0.1, maximum: 64, description });

export const HostUpdateRequest = Type.Object(
  {
    labels: Type.Optional(LabelChange),
    cpuOvercommit: Type.Optional(Ratio('vCPUs placement may give VMs per host core (default 4)')),
    memoryOvercommit: Type.Optional(Ratio("Guest memory per MiB of the host's memory after its reserve (default 1)")),
  },
  { additionalProperties: false },
);

export const PoolLabelsRequest = Type.Object({ labels: LabelChange }, { additionalProperties: false });

export const ProjectRequirementsRequest = Type.Object(
  { requirements: LabelChange },
  { additionalProperties: false, description: "Labels every host of the project's VMs and every pool of its volumes must carry" },
);

export const PlacementPolicy = Type.Union([Type.Literal('affinity'), Type.Literal('anti-affinity')]);
export const PlacementScope = Type.Union([Type.Literal('host'), Type.Literal('zone')], { description: 'host: per host; zone: per `zone` label of hosts' });

export const PlacementGroupCreateRequest = Type.Object(
  {
    name: ResourceName,
    project: Type.Optional(ResourceName),
    policy: PlacementPolicy,
    scope: Type.Optional(PlacementScope),
    strict: Type.Optional(Type.Boolean({ description: 'Refuse a host that breaks the policy (default: only prefer the others)' })),
  },
  { additionalProperties: false },
);

export const PlacementGroup = Type.Object(
  {
    id: ResourceId,
    name: ResourceName,
    project: ResourceName,
    policy: PlacementPolicy,
    scope: PlacementScope,
    strict: Type.Boolean(),
    members: List(Type.Object({ vm: ResourceName, host: Text(63), zone: Type.Optional(Text(63)) })),
    createdAt: Timestamp,
  },
  { $id: 'PlacementGroup' },
);

export const PlacementDecision = Type.Object(
  {
    host: Type.Optional(Text(63, { description: 'The chosen host; absent when none fits' })),
    hostId: Type.Optional(ResourceId),
    refused: List(Type.Object({ host: Text(63), filter: Text(32, { description: 'The rule that refused the host' }), reason: Text(1024) })),
    ranked: List(
      Type.Object({
        host: Text(63),
        score: Type.Number(),
        weights: Type.Record(Type.String({ maxLength: 32 }), Type.Number(), { description: 'What each weigher gave' }),
      }),
      { description: 'The best-scored hosts that passed every filter, best first (at most 10)' },
    ),
  },
  { $id: 'PlacementDecision' },
);
export type PlacementDecisionBody = Static<typeof PlacementDecision>;

export const ScheduleExplainRequest = Type.Object(
  {
    project: Type.Optional(ResourceName),
    cpus: Int32(1, 64, { default: 1 }),
    memoryMb: Int32(64, 1048576, { default: 256 }),
    host: Type.Optional(ResourceName),
    group: Type.Optional(ResourceName),
    networks: Type.Optional(Type.Boolean({ description: 'The VM is on virtual networks (its host needs an underlay)' })),
    vm: Type.Optional(ResourceName),
  },
  { additionalProperties: false, description: 'A VM to place; with `vm`, where that VM of the project could migrate' },
);

export const PlacementEvent = Type.Object({
  at: Timestamp,
  host: Text(63),
  action: Text(16, { description: 'create, migrate, evacuate, restore, balance, ha-restart' }),
  actor: Type.Optional(Text(128, { description: 'The user whose action placed it (absent for the system)' })),
  decision: PlacementDecision,
});

export const PlacementHistory = Type.Object({ vm: ResourceName, project: ResourceName, events: List(PlacementEvent), count: Count() });
