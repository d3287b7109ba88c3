/**
 * Schemas of desktop pools (VDI): a pool's definition, its desktops, who may use it, and what the
 * broker hands a user.
 */
import { Type, type Static } from '@sinclair/typebox';
import { Count, Int32, List, Operation, ResourceId, ResourceName, Text, Timestamp, VolumePath } from './schemas.ts';

/**
 * A desktop pool's name: its desktops are the VMs `<pool>-<n>` and the volumes
 * `desktop-<pool>-<n>`, which must stay valid names (63 characters at most), hence 40 here.
 */
export const DesktopPoolName = Type.String({
  pattern: '^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$',
  maxLength: 40,
  description: 'Lowercase letters, digits and inner hyphens, 1-40 characters (its desktops are the VMs NAME-1, NAME-2, ...)',
  examples: ['office'],
});

export const DesktopMode = Type.Union([Type.Literal('floating'), Type.Literal('dedicated')], {
  description: 'floating: any free desktop, reset to a clean clone when its user leaves; dedicated: the same desktop every time, kept',
});

export const DesktopPoolCreateRequest = Type.Object(
  {
    name: DesktopPoolName,
    image: ResourceName,
    base: VolumePath,
    size: Int32(1, 100, { description: 'Desktops in the pool at most' }),
    mode: DesktopMode,
    spare: Type.Optional(Int32(0, 100, { description: 'Unassigned desktops kept booted (default 1, at most size)' })),
    graceSeconds: Type.Optional(Int32(10, 86400, { description: 'A floating desktop whose user stays disconnected this long is reset (default 300)' })),
    cpus: Type.Optional(Int32(1, 64, { description: 'Virtual CPUs of each desktop (default 1)' })),
    memoryMb: Type.Optional(Int32(64, 1048576, { description: 'Guest memory of each desktop in MiB (default 256)' })),
    network: Type.Optional(ResourceName),
    project: Type.Optional(ResourceName),
  },
  { additionalProperties: false, $id: 'DesktopPoolCreateRequest' },
);
export type DesktopPoolCreateRequest = Static<typeof DesktopPoolCreateRequest>;

export const DesktopState = Text(16, {
  description: 'provisioning, resetting, broken, or the state of its VM (running, stopped, ...)',
});

export const Desktop = Type.Object(
  {
    id: ResourceId,
    pool: DesktopPoolName,
    slot: Count(),
    vm: ResourceName,
    vmId: Type.Optional(ResourceId),
    volume: VolumePath,
    state: DesktopState,
    assignedTo: Type.Optional(Text(63, { description: 'The user holding it' })),
    assignedAt: Type.Optional(Timestamp),
    connectedAt: Type.Optional(Timestamp),
    disconnectedAt: Type.Optional(Timestamp),
    operationId: Type.Optional(ResourceId),
    progress: Type.Optional(
      Type.Object(
        { stage: Text(256), fraction: Type.Number({ minimum: 0, maximum: 1 }) },
        { description: 'The work readying it (provisioning, a reset, a boot) while it runs' },
      ),
    ),
    error: Type.Optional(Text(1000)),
  },
  { $id: 'Desktop' },
);
export type Desktop = Static<typeof Desktop>;

export const DesktopPool = Type.Object(
  {
    id: ResourceId,
    name: DesktopPoolName,
    project: ResourceName,
    image: ResourceName,
    base: VolumePath,
    snapshot: VolumePath,
    mode: DesktopMode,
    size: Count(),
    spare: Count(),
    graceSeconds: Count(),
    cpus: Count(),
    memoryMb: Count(),
    network: Type.Optional(ResourceName),
    entitled: List(Text(70, { description: 'A user name, or group:NAME' })),
    desktops: List(Desktop),
    createdAt: Timestamp,
  },
  { $id: 'DesktopPool' },
);
export type DesktopPool = Static<typeof DesktopPool>;

export const DesktopPoolQuery = Type.Object(
  {
    project: Type.Optional(ResourceName),
    force: Type.Optional(Type.Boolean({ description: 'Delete also while desktops are assigned' })),
  },
  { additionalProperties: false },
);

export const DesktopGrantRequest = Type.Object(
  {
    user: Type.Optional(ResourceName),
    group: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9._:@-]{1,64}$', maxLength: 64, description: 'An OpenID Connect group' })),
    project: Type.Optional(ResourceName),
  },
  { additionalProperties: false },
);

/** What the broker answers a user: the desktop assigned, and the operation still readying it, if any. */
export const DesktopAssignment = Type.Object(
  {
    pool: DesktopPoolName,
    project: ResourceName,
    mode: DesktopMode,
    desktop: Desktop,
    operation: Type.Optional(Operation),
  },
  { $id: 'DesktopAssignment' },
);
export type DesktopAssignment = Static<typeof DesktopAssignment>;

/** A pool the caller may use, with the desktop they hold there, if any ("my desktops"). */
export const MyDesktop = Type.Object({
  pool: DesktopPoolName,
  project: ResourceName,
  mode: DesktopMode,
  desktop: Type.Optional(Desktop),
});
export type MyDesktop = Static<typeof MyDesktop>;
