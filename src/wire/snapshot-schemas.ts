/** Schemas of VM snapshots and clones (control/vm-snapshots.ts). */
import { Type, type Static } from '@sinclair/typebox';
import { ResourceId, ResourceName, ResourceRef, Text, Timestamp } from './schemas.ts';

export const VmSnapshot = Type.Object(
  {
    id: ResourceId,
    name: ResourceName,
    vm: ResourceName,
    withMemory: Type.Boolean({ description: 'Holds the running state too: a rollback continues the guest from that instant, without a reboot' }),
    memoryBytes: Type.Optional(Type.Integer({ format: 'int64', minimum: 0, maximum: 1e15, description: 'Size of the saved memory' })),
    disks: Type.Array(Text(32), { maxItems: 64, description: 'The disks it holds (boot: the root disk; diskN: volumes)' }),
    vmState: Text(16, { description: 'The state the VM was in when it was taken' }),
    createdAt: Timestamp,
  },
  { $id: 'VmSnapshot' },
);
export type VmSnapshot = Static<typeof VmSnapshot>;

export const VmSnapshotCreateRequest = Type.Object(
  {
    name: ResourceName,
    withMemory: Type.Optional(Type.Boolean({ description: 'Save the running state too (the VM must run or be paused)', default: false })),
  },
  { additionalProperties: false },
);

export const VmSnapshotRef = Type.Object({ vm: ResourceRef('VM name (in the project) or id'), snapshot: ResourceName });

export const VmCloneRequest = Type.Object(
  {
    name: ResourceName,
    linked: Type.Optional(
      Type.Boolean({
        description: "Copy-on-write over the template's disks (instant; the template cannot be deleted while it has linked clones)",
        default: false,
      }),
    ),
  },
  { additionalProperties: false },
);
