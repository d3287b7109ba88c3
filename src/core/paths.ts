/** Where Nubis keeps things on a machine. Every location can be moved with an environment variable. */
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

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
    storageManageSocket: join(dataDir, 'storage', 'manage.sock'),
    hostsDir: join(dataDir, 'hosts'),
    runDir: join(dataDir, 'run'),
    logsDir: join(dataDir, 'logs'),
  };
}

/** The default API port. */
export const DEFAULT_API_PORT = 8600;
