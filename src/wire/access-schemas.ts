/**
 * The wire types of access control: users, roles, bindings, tokens, sign-in, quotas and the
 * audit log. Same rules as schemas.ts: one schema validates, types and documents.
 */
import { Type } from '@sinclair/typebox';
import { ByteCount, Count, Int32, List, ResourceName, Text, Timestamp } from './schemas.ts';

/** User names: also the names OpenID Connect users arrive with (access/oidc.ts), so dots and underscores too. */
export const UserName = Type.String({
  pattern: '^[a-z][a-z0-9_.-]{0,62}$',
  maxLength: 63,
  description: 'A lowercase letter, then lowercase letters, digits, dot, underscore or hyphen (at most 63)',
  examples: ['alice'],
});

/** An OpenID Connect group name as providers send it. */
export const GroupName = Type.String({
  pattern: '^[A-Za-z0-9][A-Za-z0-9_.@:/-]{0,127}$',
  maxLength: 128,
  description: 'A group of the OpenID Connect provider: letters, digits and _ . @ : / -',
  examples: ['ops'],
});

export const PermissionName = Type.String({
  pattern: '^([a-z]+(\\.[a-z]+)*|\\*)$',
  maxLength: 64,
  description: 'A permission such as vm.create (see GET /v1/permissions), or * for all',
});

/** A password: any characters but control characters, 8 to 1024 of them. */
export const Password = Type.String({
  minLength: 8,
  maxLength: 1024,
  pattern: '^[^\\u0000-\\u001f\\u007f]*$',
  description: 'At least 8 characters, no control characters',
});

export const TotpCode = Type.String({ pattern: '^[0-9]{6}$', maxLength: 6, description: 'The 6-digit code of the authenticator app' });

export const User = Type.Object(
  {
    name: UserName,
    source: Type.Union([Type.Literal('local'), Type.Literal('oidc')]),
    totp: Type.Boolean({ description: 'Signs in with a second factor' }),
    createdAt: Timestamp,
  },
  { $id: 'User' },
);

export const UserCreateRequest = Type.Object(
  { name: UserName, password: Type.Optional(Password) },
  { additionalProperties: false, description: 'Without a password the user signs in only with tokens made for it' },
);

export const Role = Type.Object(
  {
    name: ResourceName,
    description: Text(200),
    permissions: List(PermissionName),
    builtin: Type.Boolean(),
  },
  { $id: 'Role' },
);

export const RoleCreateRequest = Type.Object(
  { name: ResourceName, description: Type.Optional(Text(200)), permissions: Type.Array(PermissionName, { minItems: 1, maxItems: 128 }) },
  { additionalProperties: false },
);

export const PermissionInfo = Type.Object({
  name: PermissionName,
  scope: Type.Union([Type.Literal('project'), Type.Literal('platform')]),
  description: Text(200),
});

export const Binding = Type.Object({
  id: Text(63),
  subject: Text(140, { description: 'A user name, or group:NAME for an OpenID Connect group' }),
  role: ResourceName,
  project: Type.Optional(ResourceName),
  createdAt: Timestamp,
});

/** Who gets (or loses) a role, and where: exactly one of user and group; no project means the whole platform. */
export const GrantRequest = Type.Object(
  { user: Type.Optional(UserName), group: Type.Optional(GroupName), role: ResourceName, project: Type.Optional(ResourceName) },
  { additionalProperties: false },
);

export const Token = Type.Object(
  {
    id: Text(63),
    name: Text(63),
    user: Text(63),
    kind: Type.Union([Type.Literal('api'), Type.Literal('session')]),
    project: Type.Optional(ResourceName),
    role: Type.Optional(ResourceName),
    createdAt: Timestamp,
    expiresAt: Type.Optional(Timestamp),
    revokedAt: Type.Optional(Timestamp),
    lastUsedAt: Type.Optional(Timestamp),
  },
  { $id: 'Token' },
);

export const TokenName = Type.String({
  pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$',
  maxLength: 63,
  description: 'Lowercase letters, digits, dot, underscore, hyphen',
});

export const TokenCreateRequest = Type.Object(
  {
    name: TokenName,
    project: Type.Optional(ResourceName),
    role: Type.Optional(ResourceName),
    expiresInSeconds: Type.Optional(Int32(60, 400 * 86400, { description: 'Lifetime; default: none (until revoked)' })),
  },
  { additionalProperties: false },
);

/** A secret shown once: the token to send as `Authorization: Bearer`. */
export const IssuedToken = Type.Object({ token: Token, secret: Text(128, { description: 'Shown once; only its hash is kept' }) });

export const LoginRequest = Type.Object(
  { user: UserName, password: Type.String({ minLength: 1, maxLength: 1024 }), totp: Type.Optional(TotpCode), hours: Type.Optional(Int32(1, 12)) },
  { additionalProperties: false },
);

export const OidcLoginRequest = Type.Object(
  { idToken: Type.String({ minLength: 16, maxLength: 16384, pattern: '^[A-Za-z0-9_.-]+$' }) },
  { additionalProperties: false },
);

export const WhoAmI = Type.Object({
  user: UserName,
  hasPassword: Type.Boolean({ description: 'The user signs in with a password (changing it needs the current one)' }),
  token: Text(63),
  tokenKind: Text(16),
  expiresAt: Type.Optional(Timestamp),
  limitedToProject: Type.Optional(ResourceName),
  limitedToRole: Type.Optional(ResourceName),
  roles: List(Type.Object({ role: ResourceName, project: Type.Optional(ResourceName), via: Text(140) })),
});

export const TotpEnrolment = Type.Object({ secret: Text(64), uri: Text(512, { description: 'otpauth:// URI for an authenticator app' }) });

const QuotaEntry = Type.Object({ limit: Type.Optional(ByteCount()), used: ByteCount() });

export const ProjectDetail = Type.Object(
  {
    id: Text(63),
    name: ResourceName,
    createdAt: Timestamp,
    quota: Type.Object({
      cpus: QuotaEntry,
      memoryMb: QuotaEntry,
      vms: QuotaEntry,
      volumeBytes: QuotaEntry,
      networks: QuotaEntry,
      portForwards: QuotaEntry,
    }),
    requireTrustedLaunch: Type.Optional(Type.Boolean({ description: 'Its VMs start only from launch measurements that match the expected ones' })),
  },
  { $id: 'ProjectDetail' },
);

const Limit = (description: string) => Type.Optional(Type.Union([ByteCount({ description }), Type.Null()]));

export const QuotaSetRequest = Type.Object(
  {
    cpus: Limit('vCPUs over all VMs; null removes the limit'),
    memoryMb: Limit('MiB of memory over all VMs'),
    vms: Limit('Number of VMs'),
    volumeBytes: Limit('Bytes over all volumes (snapshots and clones count their full size)'),
    networks: Limit('Number of networks'),
    portForwards: Limit('Number of port forwards'),
  },
  { additionalProperties: false, minProperties: 1 },
);

export const AuditEntry = Type.Object(
  {
    seq: Count(),
    at: Timestamp,
    user: Type.Optional(Text(63)),
    token: Type.Optional(Text(63)),
    project: Type.Optional(Text(63)),
    projectId: Type.Optional(Text(63)),
    action: Text(64),
    method: Text(8),
    route: Text(200),
    resource: Type.Optional(Type.Record(Type.String({ maxLength: 32 }), Type.String({ maxLength: 200 }))),
    params: Type.Optional(Type.Record(Type.String({ maxLength: 64 }), Type.Unknown())),
    operation: Type.Optional(Text(63)),
    result: Type.Union([Type.Literal('ok'), Type.Literal('denied'), Type.Literal('failed')]),
    status: Type.Optional(Int32(100, 599)),
    code: Type.Optional(Text(64)),
    reason: Type.Optional(Text(400)),
  },
  { $id: 'AuditEntry' },
);

const Hex64 = Type.String({ pattern: '^[0-9a-f]{64}$', maxLength: 64 });

export const TreeHead = Type.Object(
  {
    treeSize: Count(),
    rootHash: Hex64,
    timestamp: Timestamp,
    signature: Type.String({ pattern: '^[A-Za-z0-9+/=]+$', maxLength: 200 }),
    publicKey: Type.Optional(Text(1000)),
    keyId: Type.Optional(Text(64)),
  },
  { $id: 'TreeHead' },
);

export const AuditVerifyReport = Type.Object({
  ok: Type.Boolean(),
  entries: Count(),
  heads: Count(),
  latestHead: Type.Optional(TreeHead),
  externalHead: Type.Optional(Type.Object({ treeSize: Count(), matched: Type.Boolean() })),
  problems: List(Text(400)),
  notes: List(Text(400)),
});

export const InclusionProof = Type.Object({ seq: Count(), leafIndex: Count(), treeSize: Count(), leafHash: Hex64, rootHash: Hex64, proof: List(Hex64) });
export const ConsistencyProof = Type.Object({ fromSize: Count(), toSize: Count(), fromRoot: Hex64, toRoot: Hex64, proof: List(Hex64) });

export const AuditExport = Type.Object({
  format: Text(40),
  publicKey: Text(1000),
  entries: Type.Array(Type.Object({ seq: Count(), data: Text(65536) }), { maxItems: 10_000_000 }),
  heads: Type.Array(TreeHead, { maxItems: 10_000_000 }),
});

/** POST /v1/vms/{vm}/console-ticket: which console the ticket opens. */
export const ConsoleTicketRequest = Type.Object(
  { kind: Type.Union([Type.Literal('vnc'), Type.Literal('serial')], { description: 'vnc: the screen (RFB); serial: the serial console (bytes)' }) },
  { additionalProperties: false },
);

/** A console ticket, shown once: open `path` as a WebSocket within 30 s, once. */
export const ConsoleTicket = Type.Object({
  ticket: Type.String({ maxLength: 100, description: 'One-time ticket: single use, valid until expiresAt, bound to you, this token and this VM' }),
  expiresAt: Type.String({ format: 'date-time', maxLength: 40 }),
  path: Type.String({ maxLength: 300, description: 'The WebSocket to open, ticket included (same origin as the API)' }),
  password: Type.Optional(
    Type.String({ minLength: 8, maxLength: 8, description: "vnc only: the display's one-time VNC password, for the RFB handshake (VNC authentication)" }),
  ),
});
