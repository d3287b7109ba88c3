/**
 * A storage node: the storage service (pools, volumes, the NBD server) plus a small management
 * API for the control plane on a unix socket. Long actions (scrub, member replacement, key
 * rotation) run as jobs whose progress the control plane samples into its operations. Registered
 * hosts get an NBD socket each and can be fenced; each VM on them gets a socket of its own that
 * serves only its volumes (host-fencing.ts). The key-encryption keys of encrypted volumes are in
 * a key file of the node (storage/keys/file-key-provider.ts).
 *
 * What it creates is closed to other users (VMs run as unprivileged uids of their own, and the
 * data folder is passable by them): the pools folder, the shared NBD socket, the management
 * socket and the keys are root's alone; only the hosts folder is passable, on the way to each
 * VM's socket.
 */
import { chmod, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { isNubisError, messageOf, NubisError } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import { closeStorageFolder, closeToOthers } from '../core/data-folder.ts';
import { checkHostName, type DataPaths } from '../core/paths.ts';
import { HostFencing } from './host-fencing.ts';
import { FileKeyProvider } from './keys/file-key-provider.ts';
import type { PoolProgress } from './pool/storage-pool.ts';
import { toWireError } from '../core/error-codes.ts';
import type { NbdTlsOptions } from './nbd/nbd-server.ts';
import { StorageService, type CreatePoolRequest, type KeyRotationProgress } from './service.ts';
import { checkVmExports, checkVmUid } from './vm-socket-checks.ts';

/** Where a storage node listens. */
export interface StorageNodeOptions {
  poolsDir: string;
  /**
   * The NBD server's shared unix socket (root's alone, mode 0600): tools of this machine, and the
   * QEMU of VMs recorded before per-host sockets, attach volumes here. It cannot be fenced.
   */
  nbdSocket: string;
  /**
   * Folder of the per-host sockets (`<host>/nbd.sock`), the VM sockets (`<host>/vm-<uid>.sock`)
   * and the fencing state. Default: `hosts` beside `nbdSocket`, which is `<data>/storage/hosts`
   * (core/paths.ts `hostNbdSocket`).
   */
  hostsDir?: string;
  /**
   * Folder of the key file that holds the key-encryption keys of encrypted volumes (mode 0700,
   * the file 0600). Default: `keys` beside `nbdSocket`, which is `<data>/storage/keys`.
   */
  keysDir?: string;
  /** How long a fence waits for a host's requests already running on volumes. Default 30 000 ms. */
  fenceTimeoutMs?: number;
  /** The management API's unix socket. */
  manageSocket: string;
  /** Also serve NBD on TCP (port 0 picks one), for hosts that do not share this machine's filesystem. */
  nbdTcp?: { host: string; port: number };
  /**
   * Require TLS there (the unix socket stays plaintext). With a CA (`ca`), every client shows a
   * certificate of it, and the name in it says which VM it is (`vm-<uid>.<host>`): it is served
   * what that VM's socket serves, behind its host's fence (host-fencing.ts `admitPeer`).
   */
  nbdTls?: NbdTlsOptions;
}

/** The folders and sockets of the storage node of a data folder (`nubis daemon storage` uses these). */
export function storageNodeFolders(paths: DataPaths): Pick<StorageNodeOptions, 'poolsDir' | 'nbdSocket' | 'hostsDir' | 'keysDir' | 'manageSocket'> {
  return {
    poolsDir: paths.storagePools,
    nbdSocket: paths.storageNbdSocket,
    hostsDir: paths.storageHosts,
    keysDir: paths.storageKeys,
    manageSocket: paths.storageManageSocket,
  };
}

/** A long action on the node. */
export interface StorageJob {
  id: string;
  kind: 'scrub' | 'replace' | 'key-rotate';
  /** The pool it works on ('' for a node-wide job). */
  pool: string;
  status: 'running' | 'succeeded' | 'failed';
  progress?: PoolProgress | KeyRotationProgress;
  result?: unknown;
  error?: { code: string; message: string };
}

/** Starts the storage service and its management API; resolves once both listen. */
export async function startStorageNode(
  options: StorageNodeOptions,
): Promise<{ service: StorageService; hosts: HostFencing; app: FastifyInstance; stop(): Promise<void> }> {
  let hosts: HostFencing | undefined;
  // A VM's certificate maps to its socket's list and its host's gate, once both are known.
  const admitPeer = (name: string) => hosts?.admitPeer(name) ?? 'the storage node is starting';
  const { service, failures } = await StorageService.start({
    poolsDir: options.poolsDir,
    socketPath: options.nbdSocket,
    ...(options.nbdTcp ? { tcp: { ...options.nbdTcp, ...(options.nbdTls?.ca ? { admitPeer } : {}) } } : {}),
    ...(options.nbdTls ? { nbdTls: options.nbdTls } : {}),
    keys: new FileKeyProvider(options.keysDir ?? join(dirname(options.nbdSocket), 'keys')),
  });
  const storageDir = dirname(options.nbdSocket);
  const hostsDir = options.hostsDir ?? join(storageDir, 'hosts');
  try {
    hosts = await HostFencing.open({
      hostsDir,
      server: { listen: (path, listenOptions) => service.listenGated(path, listenOptions), closeListener: (path) => service.closeListener(path) },
      ...(options.fenceTimeoutMs === undefined ? {} : { fenceTimeoutMs: options.fenceTimeoutMs }),
    });
  } catch (error) {
    await service.close();
    throw error;
  }
  const app = Fastify({ logger: false });
  const jobs = new StorageJobs();

  app.setErrorHandler((error, _request, reply) => {
    const { status, body } = (error as { validation?: unknown }).validation
      ? { status: 400, body: { code: 'VALIDATION_FAILED', message: messageOf(error) } }
      : toWireError(error);
    void reply.status(status).send(body);
  });
  // `nbdTcp`: where hosts that do not share this filesystem attach volumes (the bound port).
  const tcp = service.addresses.tcp;
  const nbdTcp = tcp ? { ...tcp, tls: options.nbdTls !== undefined, clientCertificates: options.nbdTls?.ca !== undefined } : undefined;
  app.get('/storage/info', async () => ({ nbdSocket: options.nbdSocket, ...(nbdTcp ? { nbdTcp } : {}), openFailures: failures }));
  registerPoolRoutes(app, service, jobs);
  app.get<{ Params: { id: string } }>('/storage/jobs/:id', async (request) => jobs.get(request.params.id));
  registerVolumeRoutes(app, service);
  registerKeyRoutes(app, service, jobs);
  registerHostRoutes(app, hosts);

  await rm(options.manageSocket, { force: true });
  await app.listen({ path: options.manageSocket });
  // Root's alone, whatever the umask gave them (the data folder lets VMs' users pass through).
  await chmod(options.manageSocket, 0o600);
  await chmod(options.nbdSocket, 0o600);
  await closeToOthers(options.poolsDir);
  // The data folder's layout (`<data>/storage` with `hosts` in it): passable on the way to VM
  // sockets only. A node started elsewhere (a test's folder) leaves its folder's other files be.
  if (basename(storageDir) === 'storage' && hostsDir === join(storageDir, 'hosts')) await closeStorageFolder(storageDir);
  return {
    service,
    hosts,
    app,
    async stop() {
      await app.close();
      await service.close();
    },
  };
}

/** The node's long actions, kept (finished ones too) so the control plane can sample them. */
class StorageJobs {
  readonly #jobs = new Map<string, StorageJob>();

  /** Starts `work` as a job and returns it at once, running; its outcome lands on the job. */
  start<P extends NonNullable<StorageJob['progress']>>(
    kind: StorageJob['kind'],
    pool: string,
    work: (onProgress: (progress: P) => void) => Promise<unknown>,
  ): StorageJob {
    const job: StorageJob = { id: newId('job'), kind, pool, status: 'running' };
    this.#jobs.set(job.id, job);
    work((progress) => (job.progress = progress)).then(
      (result) => Object.assign(job, { status: 'succeeded', result }),
      (error: unknown) =>
        Object.assign(job, { status: 'failed', error: { code: isNubisError(error) ? error.code : 'INTERNAL_ERROR', message: messageOf(error) } }),
    );
    return job;
  }

  /** The job with this id; throws `STORAGE_JOB_NOT_FOUND`. */
  get(id: string): StorageJob {
    const job = this.#jobs.get(id);
    if (!job) throw new NubisError('STORAGE_JOB_NOT_FOUND', `No storage job ${id}`);
    return job;
  }
}

type PoolParams = { Params: { pool: string } };
type VolumeParams = { Params: { pool: string; volume: string } };

/** Pools: create, read, delete, and the long scrub and member replacement as jobs. */
function registerPoolRoutes(app: FastifyInstance, service: StorageService, jobs: StorageJobs): void {
  app.get('/storage/pools', async () => service.listPools());
  app.post<{ Body: CreatePoolRequest }>('/storage/pools', async (request, reply) => reply.status(201).send(await service.createPool(request.body)));
  app.get<PoolParams>('/storage/pools/:pool', async (request) => service.getPool(request.params.pool));
  app.delete<PoolParams>('/storage/pools/:pool', async (request, reply) => {
    await service.deletePool(request.params.pool);
    return reply.status(204).send();
  });
  app.post<PoolParams & { Body: { maxBytesPerSec?: number } }>('/storage/pools/:pool/scrub', async (request, reply) => {
    service.getPool(request.params.pool);
    return reply
      .status(202)
      .send(
        jobs.start('scrub', request.params.pool, (onProgress) =>
          service.scrubPool(request.params.pool, { onProgress, maxBytesPerSec: request.body?.maxBytesPerSec }),
        ),
      );
  });
  app.post<PoolParams & { Body: { member: number | string; device: string; maxBytesPerSec?: number; force?: boolean } }>(
    '/storage/pools/:pool/replace',
    async (request, reply) => {
      const { member, device, maxBytesPerSec, force } = request.body ?? {};
      // Bad devices are refused here, with a 4xx, rather than as a failed job after the 202.
      await service.checkReplacement(request.params.pool, member, device, { force });
      return reply
        .status(202)
        .send(
          jobs.start('replace', request.params.pool, (onProgress) =>
            service.replaceMember(request.params.pool, member, device, { onProgress, maxBytesPerSec, force }),
          ),
        );
    },
  );
}

/** Keys of encrypted volumes: the key provider's state, and rotation of the KEK as a job. */
function registerKeyRoutes(app: FastifyInstance, service: StorageService, jobs: StorageJobs): void {
  app.get('/storage/keys', async () => service.keyStatus());
  app.post('/storage/keys/rotate', async (_request, reply) => {
    // Refused here (no provider, a rotation running: it throws at once) rather than as a failed job after the 202.
    let report: (progress: KeyRotationProgress) => void = () => undefined;
    const rotation = service.rotateKeys((progress) => report(progress));
    const job = jobs.start<KeyRotationProgress>('key-rotate', '', (onProgress) => {
      report = onProgress;
      return rotation;
    });
    return reply.status(202).send(job);
  });
}

type HostParams = { Params: { host: string } };
type VmSocketParams = { Params: { host: string; uid: string } };

/**
 * Hosts: register (its own NBD socket), list, fence and unfence; and the VM sockets of a host:
 * list, read, serve (`PUT {exports: [POOL/VOLUME, ...]}`: create, or replace the list) and
 * release. The host name and the uid become parts of a path: they are checked here, and again
 * where the path is built; the exports are checked here and again before they reach a list.
 */
function registerHostRoutes(app: FastifyInstance, hosts: HostFencing): void {
  app.get('/storage/hosts', async () => hosts.list());
  app.get<HostParams>('/storage/hosts/:host', async (request) => hosts.get(checkHostName(request.params.host)));
  app.put<HostParams>('/storage/hosts/:host', async (request) => hosts.register(checkHostName(request.params.host)));
  app.post<HostParams>('/storage/hosts/:host/fence', async (request) => hosts.fence(checkHostName(request.params.host)));
  app.post<HostParams>('/storage/hosts/:host/unfence', async (request) => hosts.unfence(checkHostName(request.params.host)));
  app.get<HostParams>('/storage/hosts/:host/vms', async (request) => hosts.vms(checkHostName(request.params.host)));
  app.get<VmSocketParams>('/storage/hosts/:host/vms/:uid', async (request) => hosts.vm(checkHostName(request.params.host), checkVmUid(request.params.uid)));
  app.put<VmSocketParams & { Body: unknown }>('/storage/hosts/:host/vms/:uid', async (request) => {
    const host = checkHostName(request.params.host);
    const uid = checkVmUid(request.params.uid);
    return hosts.serveVm(host, uid, checkVmExports(exportsOf(request.body)));
  });
  app.delete<VmSocketParams>('/storage/hosts/:host/vms/:uid', async (request, reply) => {
    await hosts.releaseVm(checkHostName(request.params.host), checkVmUid(request.params.uid));
    return reply.status(204).send();
  });
}

/** The `exports` of a body that holds nothing else; `STORAGE_EXPORT_INVALID` otherwise. */
function exportsOf(body: unknown): unknown {
  const fields = body !== null && typeof body === 'object' && !Array.isArray(body) ? Object.keys(body) : undefined;
  if (!fields || fields.some((field) => field !== 'exports')) {
    throw new NubisError('STORAGE_EXPORT_INVALID', 'Send a JSON object {"exports": ["POOL/VOLUME", ...]} and nothing else', {
      details: { fields: fields?.slice(0, 10) ?? null },
    });
  }
  return (body as { exports?: unknown }).exports;
}

/** Volumes of a pool: create, read, delete, snapshot, clone and resize. */
function registerVolumeRoutes(app: FastifyInstance, service: StorageService): void {
  app.get<PoolParams>('/storage/pools/:pool/volumes', async (request) => service.listVolumes(request.params.pool));
  app.post<PoolParams & { Body: { name: string; size: number | string; encrypted?: boolean } }>('/storage/pools/:pool/volumes', async (request, reply) =>
    reply.status(201).send(await service.createVolume(request.params.pool, request.body.name, request.body.size, { encrypted: request.body.encrypted })),
  );
  app.get<VolumeParams>('/storage/pools/:pool/volumes/:volume', async (request) => service.getVolume(request.params.pool, request.params.volume));
  app.delete<VolumeParams>('/storage/pools/:pool/volumes/:volume', async (request, reply) => {
    await service.deleteVolume(request.params.pool, request.params.volume);
    return reply.status(204).send();
  });
  app.post<VolumeParams & { Body: { name: string } }>('/storage/pools/:pool/volumes/:volume/snapshot', async (request, reply) =>
    reply.status(201).send(await service.snapshotVolume(request.params.pool, request.params.volume, request.body.name)),
  );
  app.post<VolumeParams & { Body: { name: string } }>('/storage/pools/:pool/volumes/:volume/clone', async (request, reply) =>
    reply.status(201).send(await service.cloneVolume(request.params.pool, request.params.volume, request.body.name)),
  );
  app.post<VolumeParams & { Body: { size: number | string } }>('/storage/pools/:pool/volumes/:volume/resize', async (request) =>
    service.resizeVolume(request.params.pool, request.params.volume, request.body.size),
  );
}
