/** Where Nubis keeps things on a machine. Every location can be moved with an environment variable. */
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NubisError } from './errors.ts';

/** The repository (or installed package) root. */
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Build cache: guest kernel package, built images, accelerator probe. `NUBIS_CACHE` moves it. */
export function cacheDir(): string {
  return process.env.NUBIS_CACHE ?? join(repoRoot, '.cache');
}

/** State of a running Nubis (database, hosts, VMs, tokens). `--data` or `NUBIS_DATA` moves it. */
export function defaultDataDir(): string {
  if (process.env.NUBIS_DATA) return resolve(process.env.NUBIS_DATA);
  return process.getuid?.() === 0 ? '/var/lib/nubis' : join(homedir(), '.local', 'share', 'nubis');
}

/** The files of a data folder. */
export function dataPaths(dataDir: string) {
  return {
    database: join(dataDir, 'nubis.db'),
    adminToken: join(dataDir, 'admin-token'),
    joinToken: join(dataDir, 'join-token'),
    /** The key the control plane derives each agent's control token from (never in the database). */
    controlKey: join(dataDir, 'control-key'),
    apiInfo: join(dataDir, 'api.json'),
    /** The Ed25519 key that signs the audit log's tree heads. */
    auditKey: join(dataDir, 'audit-key.pem'),
    /** The API on a unix socket, for host agents in network namespaces. */
    agentApiSocket: join(dataDir, 'api.sock'),
    images: join(dataDir, 'images'),
    /** The only place image imports are read from (mode 0700); `nubis image import` copies files here. */
    imports: join(dataDir, 'import'),
    /** The storage node of this machine: pools, the NBD socket VMs attach volumes through, its API. */
    storagePools: join(dataDir, 'storage', 'pools'),
    storageNbdSocket: join(dataDir, 'storage', 'nbd.sock'),
    /** A folder per registered host with its own NBD socket (see `hostNbdSocket`), and the fencing state. */
    storageHosts: join(dataDir, 'storage', 'hosts'),
    storageManageSocket: join(dataDir, 'storage', 'manage.sock'),
    /** The key file of the key-encryption keys of encrypted volumes (folder 0700, file 0600). */
    storageKeys: join(dataDir, 'storage', 'keys'),
    /** The backup store: sealed chunks and backups (folder 0700), and its API's socket (0600). */
    backupStore: join(dataDir, 'backups'),
    backupStoreSocket: join(dataDir, 'backups', 'store.sock'),
    /** The key file of the key that wraps each project's backup key (folder 0700, file 0600). */
    backupKeys: join(dataDir, 'backup-keys'),
    hostsDir: join(dataDir, 'hosts'),
    runDir: join(dataDir, 'run'),
    logsDir: join(dataDir, 'logs'),
    /** The usage graphs of VMs and hosts (round-robin series), saved every few minutes. */
    usage: join(dataDir, 'usage.json'),
  };
}

/** The files of a data folder, as `dataPaths` names them. */
export type DataPaths = ReturnType<typeof dataPaths>;

/** A host name as it may become a folder name: a DNS label, so never `.`, `..` or a `/`. */
const HOST_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** Linux's sun_path holds 108 bytes with the terminating NUL. */
const MAX_UNIX_SOCKET_PATH_BYTES = 107;

/**
 * Checks a host name before it becomes part of a path; `STORAGE_HOST_NAME_INVALID` naming the
 * value otherwise. Every place that builds a path from a host name calls it, also behind a route
 * that validated the name already.
 */
export function checkHostName(name: unknown): string {
  if (typeof name !== 'string' || !HOST_NAME.test(name)) {
    const shown = typeof name === 'string' ? JSON.stringify(name.length > 70 ? `${name.slice(0, 70)}...` : name) : String(typeof name);
    throw new NubisError(
      'STORAGE_HOST_NAME_INVALID',
      `The host name ${shown} is not valid: use 1 to 63 lowercase letters, digits and inner hyphens (no dots or slashes)`,
      { details: { host: typeof name === 'string' ? name.slice(0, 70) : typeof name } },
    );
  }
  return name;
}

/**
 * The NBD socket that the QEMU processes of host `hostName` attach storage-node volumes through:
 * `<data>/storage/hosts/<host>/nbd.sock`. A socket per host lets the storage node tell hosts apart
 * and fence one (refuse its I/O) before its VMs are restarted elsewhere; a folder per host lets a
 * later permission scheme give it an owner.
 */
export function hostNbdSocket(dataDir: string, hostName: string): string {
  return hostNbdSocketIn(join(dataDir, 'storage', 'hosts'), hostName);
}

/** `hostNbdSocket` inside a storage node's hosts folder (the node is told only that folder). */
export function hostNbdSocketIn(hostsDir: string, hostName: string): string {
  return checkSocketPathLength(join(hostsDir, checkHostName(hostName), 'nbd.sock'), hostName);
}

/**
 * The NBD socket of one VM on host `hostName`, named by the uid its QEMU runs as:
 * `<hostsDir>/<host>/vm-<uid>.sock`. The storage node serves on it only that VM's volumes, to
 * that uid only (storage/host-fencing.ts). `STORAGE_VM_UID_INVALID` for a uid that is not a
 * positive 32-bit number (the storage node checks the VM range itself).
 */
export function vmNbdSocketIn(hostsDir: string, hostName: string, uid: number): string {
  if (!Number.isInteger(uid) || uid <= 0 || uid >= 2 ** 32 - 1) {
    throw new NubisError('STORAGE_VM_UID_INVALID', `The uid ${String(uid)} is not a VM's uid: give a whole number from 1 to 4294967294`, {
      details: { uid: String(uid).slice(0, 40) },
    });
  }
  return checkSocketPathLength(join(hostsDir, checkHostName(hostName), `vm-${uid}.sock`), hostName);
}

function checkSocketPathLength(path: string, hostName: string): string {
  if (Buffer.byteLength(path) > MAX_UNIX_SOCKET_PATH_BYTES) {
    throw new NubisError(
      'STORAGE_SOCKET_PATH_TOO_LONG',
      `The NBD socket path ${path} is ${Buffer.byteLength(path)} bytes, over the ${MAX_UNIX_SOCKET_PATH_BYTES} a unix socket takes: use a shorter host name or data folder`,
      { details: { host: hostName, path } },
    );
  }
  return path;
}

/** The default API port. */
export const DEFAULT_API_PORT = 8600;
