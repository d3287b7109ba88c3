/** Schemas of backups (control/backups.ts). */
import { Type, type Static } from '@sinclair/typebox';
import { ResourceId, ResourceName, Text, Timestamp } from './schemas.ts';

const Bytes = (description: string) => Type.Integer({ format: 'int64', minimum: 0, maximum: 1e18, description });

export const Backup = Type.Object(
  {
    id: ResourceId,
    vm: ResourceName,
    vmState: Text(16, { description: 'The state the VM was in when it was taken (a running VM is backed up crash-consistent)' }),
    createdAt: Timestamp,
    sizeBytes: Bytes('Size of the disks it holds'),
    sentBytes: Bytes('Bytes sent to the store: only the chunks it had not got (the first backup sends all that is not zero)'),
    storedBytes: Bytes('Bytes the store keeps for it, shared chunks included'),
    durationMs: Bytes('How long it took'),
    disks: Type.Array(
      Type.Object({
        id: Text(32, { description: 'boot: the root disk; diskN: volumes' }),
        source: Text(4096, { description: 'root, or the volume (POOL/VOLUME)' }),
        sizeBytes: Bytes('Size of the disk'),
        chunks: Type.Integer({ format: 'int32', minimum: 0, maximum: 1e9, description: 'Chunks of 4 MiB' }),
        zeroChunks: Type.Integer({ format: 'int32', minimum: 0, maximum: 1e9, description: 'Chunks all zero (not stored)' }),
        newChunks: Type.Integer({ format: 'int32', minimum: 0, maximum: 1e9, description: 'Chunks the store had not got, sent by this backup' }),
        sentBytes: Bytes('Bytes sent for this disk'),
        readBytes: Type.Optional(
          Bytes('Bytes read of the disk: all of it, or with changed-block tracking only the chunks written since the backup changedSince'),
        ),
        changedSince: Type.Optional(
          Type.String({
            maxLength: 16,
            pattern: '^bak-[0-9a-f]{12}$',
            description: 'The backup whose dirty bitmap said which chunks to read (absent: every chunk was read)',
          }),
        ),
      }),
      { maxItems: 64 },
    ),
    catalogFiles: Type.Integer({ format: 'int32', minimum: 0, maximum: 1e9, description: 'Files and folders of its disks in its encrypted catalog' }),
    catalogNotes: Type.Array(Text(4096), { maxItems: 16, description: 'What the catalog left out and why (a disk without a filesystem it reads)' }),
    settings: Type.Object(
      {
        image: ResourceName,
        cpus: Type.Integer({ format: 'int32', minimum: 1, maximum: 1024 }),
        memoryMb: Type.Integer({ format: 'int32', minimum: 1, maximum: 16777216 }),
        networks: Type.Array(ResourceName, { maxItems: 16 }),
        host: ResourceName,
      },
      { description: 'What a restore recreates the VM with' },
    ),
  },
  { $id: 'Backup' },
);
export type Backup = Static<typeof Backup>;
/** The VM's settings a restore recreates it with (sealed in the manifest too). */
export type BackupSettings = Backup['settings'];

export const BackupVerification = Type.Object(
  {
    backup: ResourceId,
    ok: Type.Boolean(),
    checkedChunks: Type.Integer({ format: 'int32', minimum: 0, maximum: 1e9 }),
    missingChunks: Type.Array(Text(64), { maxItems: 262144 }),
    corruptChunks: Type.Array(Text(64), { maxItems: 262144 }),
  },
  { $id: 'BackupVerification' },
);
export type BackupVerification = Static<typeof BackupVerification>;

export const BackupRef = Type.Object({ backup: Type.String({ pattern: '^bak-[0-9a-f]{12}$', maxLength: 16, description: 'Backup id' }) });

export const BackupCreateRequest = Type.Object(
  { vm: Type.String({ minLength: 1, maxLength: 63, description: 'VM name (in the project) or id' }) },
  { additionalProperties: false },
);

export const BackupRestoreRequest = Type.Object(
  {
    name: ResourceName,
    pool: Type.Optional(ResourceName),
    host: Type.Optional(ResourceName),
    live: Type.Optional(
      Type.Boolean({ description: 'Start the VM at once, its disks read from the backup on first use and pulled in the background (volumes only)' }),
    ),
  },
  { additionalProperties: false },
);

export const BackupListQuery = Type.Object({
  project: Type.Optional(ResourceName),
  vm: Type.Optional(ResourceName),
});

export const BackupCollectRequest = Type.Object(
  {
    graceSeconds: Type.Optional(
      Type.Integer({
        format: 'int32',
        minimum: 0,
        maximum: 31536000,
        default: 86400,
        description: 'Keep chunks written or found this recently (a backup may be using them)',
      }),
    ),
  },
  { additionalProperties: false },
);

export const BackupAudit = Type.Object(
  {
    backup: ResourceId,
    at: Timestamp,
    blocks: Type.Integer({ format: 'int32', minimum: 0, maximum: 4096, description: 'Blocks of 4 KiB challenged' }),
    passed: Type.Boolean({ description: 'The store proved it holds every challenged block unaltered' }),
    proofBytes: Type.Integer({ format: 'int32', minimum: 0, maximum: 1e6, description: "Size of the store's proof" }),
    storeMs: Type.Integer({ format: 'int32', minimum: 0, maximum: 1e9, description: 'Time the store took to answer' }),
    verifyMs: Type.Integer({ format: 'int32', minimum: 0, maximum: 1e9, description: 'Time to check the proof' }),
    error: Type.Optional(Text(4096, { description: 'Why the store could not answer' })),
  },
  { $id: 'BackupAudit' },
);
export type BackupAudit = Static<typeof BackupAudit>;

export const BackupChallengeRequest = Type.Object(
  {
    backup: Type.Optional(BackupRef.properties.backup),
    blocks: Type.Optional(
      Type.Integer({
        format: 'int32',
        minimum: 1,
        maximum: 4096,
        default: 460,
        description: 'Blocks to challenge (460: 1% damage found with >99% probability)',
      }),
    ),
  },
  { additionalProperties: false },
);

export const BackupSearchRequest = Type.Object(
  { word: Type.String({ minLength: 1, maxLength: 255, description: 'A file name, or a word of one (case does not matter)' }) },
  { additionalProperties: false },
);

export const BackupSearchHit = Type.Object(
  {
    backup: ResourceId,
    vm: ResourceName,
    createdAt: Timestamp,
    files: Type.Array(Type.Object({ disk: Text(4096), path: Text(8192) }), { maxItems: 200000 }),
  },
  { $id: 'BackupSearchHit' },
);
export type BackupSearchHit = Static<typeof BackupSearchHit>;

export const BackupFileRestoreRequest = Type.Object(
  {
    path: Type.String({
      minLength: 2,
      maxLength: 4096,
      // Never on a command line (files are looked up by inode or read directly), but no NUL either.
      pattern: '^(p[0-9]{1,3}:)?/[^\\x00]*$',
      description: "The file's path as backup search names it: /dir/file, or p1:/dir/file on a partitioned disk",
    }),
    disk: Type.Optional(
      Type.String({
        pattern: '^[A-Za-z0-9][A-Za-z0-9._/-]{0,159}$',
        maxLength: 160,
        description: 'The disk as backup search names it (root, or pool/volume); needed when the backup holds several',
      }),
    ),
  },
  { additionalProperties: false },
);

/** The largest file `backup file-restore` answers (its bytes travel in the JSON answer, base64). */
export const FILE_RESTORE_MAX_BYTES = 64 * 1024 * 1024;

export const RestoredFile = Type.Object(
  {
    backup: ResourceId,
    disk: Text(160),
    path: Text(4096),
    sizeBytes: Type.Integer({ format: 'int64', minimum: 0, maximum: FILE_RESTORE_MAX_BYTES }),
    sha256: Type.String({ pattern: '^[0-9a-f]{64}$', maxLength: 64 }),
    // 64 MiB in base64: 4 characters per 3 bytes.
    contentBase64: Type.String({
      contentEncoding: 'base64',
      maxLength: Math.ceil(FILE_RESTORE_MAX_BYTES / 3) * 4,
      description: 'The whole file (up to 64 MiB)',
    }),
  },
  { $id: 'RestoredFile' },
);
export type RestoredFile = Static<typeof RestoredFile>;

/** How often a schedule runs: a whole number of minutes, hours, days or weeks, from 1m to 366d. */
export const BackupInterval = Type.String({
  pattern: '^[1-9][0-9]{0,5}[mhdw]$',
  maxLength: 7,
  description: 'A whole number of minutes (m), hours (h), days (d) or weeks (w), from 1m to 366d, e.g. 15m, 1h, 6h, 1d',
  examples: ['1h'],
});

const Keep = (description: string) => Type.Optional(Type.Integer({ format: 'int32', minimum: 1, maximum: 100000, description }));

export const BackupRetention = Type.Object(
  {
    keepLast: Keep('The N newest backups'),
    keepHourly: Keep('The newest backup of each of the N newest hours (UTC) that have one'),
    keepDaily: Keep('The newest backup of each of the N newest days (UTC) that have one'),
    keepWeekly: Keep('The newest backup of each of the N newest ISO weeks that have one'),
    keepMonthly: Keep('The newest backup of each of the N newest months (UTC) that have one'),
    keepYearly: Keep('The newest backup of each of the N newest years (UTC) that have one'),
  },
  {
    additionalProperties: false,
    description:
      "Which of the VM's backups (scheduled or not) stay after each scheduled backup, as Proxmox Backup Server's prune: each rule keeps periods an earlier one has not; no rule keeps them all",
  },
);
export type BackupRetention = Static<typeof BackupRetention>;

export const BackupScheduleRequest = Type.Object(
  {
    every: BackupInterval,
    retention: Type.Optional(BackupRetention),
  },
  { additionalProperties: false },
);
export type BackupScheduleRequest = Static<typeof BackupScheduleRequest>;

export const BackupSchedule = Type.Object(
  {
    vm: ResourceName,
    every: BackupInterval,
    intervalSeconds: Type.Integer({ format: 'int32', minimum: 60, maximum: 31622400 }),
    retention: BackupRetention,
    nextRunAt: Timestamp,
    running: Type.Union([Type.Object({ since: Timestamp, operation: Type.Union([ResourceId, Type.Null()]) }), Type.Null()], {
      description: 'The run under way: since when, and its operation once started',
    }),
    lastRun: Type.Union(
      [
        Type.Object({
          status: Type.Union([Type.Literal('succeeded'), Type.Literal('failed')]),
          startedAt: Timestamp,
          finishedAt: Timestamp,
          operation: Type.Union([ResourceId, Type.Null()], { description: 'The backup.create operation (null when the backup could not start)' }),
          backup: Type.Union([ResourceId, Type.Null()], { description: 'The backup it took' }),
          pruned: Type.Integer({ format: 'int32', minimum: 0, maximum: 1e9, description: 'Backups the retention rules deleted after it' }),
          error: Type.Union([Type.Object({ code: Text(64), message: Text(4096) }), Type.Null()], {
            description: 'Why it failed: the backup, or the pruning after it',
          }),
        }),
        Type.Null(),
      ],
      { description: 'The last run that ended; null before the first' },
    ),
    createdAt: Timestamp,
    updatedAt: Timestamp,
  },
  { $id: 'BackupSchedule' },
);
export type BackupSchedule = Static<typeof BackupSchedule>;
