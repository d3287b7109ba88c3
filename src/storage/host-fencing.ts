/**
 * The hosts a storage node serves, I/O fencing per host (high availability), and a socket per VM
 * (isolation).
 *
 * Fencing: before the control plane restarts a failed host's VMs elsewhere it fences that host
 * here, so that a QEMU still running on a cut-off host can never write to a volume that a new
 * QEMU also writes. Every host has an `NbdGate` (nbd/nbd-gate.ts): a generation and a fenced
 * flag. Connections on any of the host's sockets are tagged with the generation at accept; a
 * fence raises it, marks the host fenced and closes its connections at once; every request checks
 * its tag, so a request of an earlier generation gets NBD_EPERM; while fenced, the sockets refuse
 * export selection with the reason.
 *
 * VM sockets: each VM's QEMU runs as a uid of its own (compute/vm-user.ts) and reaches its
 * volumes through `<hostsDir>/<host>/vm-<uid>.sock`, a socket owned by that uid (mode 0600, so
 * only that QEMU and root can connect) that serves only the exports the control plane allowed
 * for the VM (nbd/nbd-export-access.ts: any other name is refused in the handshake, and a name
 * taken off the list cuts the connections that use it). A VM socket belongs to its host: it
 * passes through the host's gate, so a fence cuts and refuses it with the host's other sockets.
 * The host's own socket `<host>/nbd.sock` serves every export, to root only (mode 0600).
 *
 * Folders: `<hostsDir>` and `<hostsDir>/<host>` are passable by others (0711: a VM's QEMU can
 * reach its socket by name, never list); the state file and a staging folder (where sockets are
 * bound and given their owner before they appear under their name) are root's alone.
 *
 * The state lives in `<hostsDir>/fencing.json` (host-state-file.ts), so a restarted node keeps a
 * fenced host fenced and listens again on every host's and every VM's socket, with the same lists.
 */
import { chmod, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { NubisError } from '../core/errors.ts';
import { checkHostName, hostNbdSocketIn, vmNbdSocketIn } from '../core/paths.ts';
import { KeyedSerialQueue } from '../core/serial-queue.ts';
import { readHostStateFile, writeHostStateFile, type HostStateEntry } from './host-state-file.ts';
import { NbdExportAccess } from './nbd/nbd-export-access.ts';
import { NbdGate } from './nbd/nbd-gate.ts';
import type { NbdSocketFile } from './nbd/nbd-server.ts';
import { checkVmExports, parseVmStorageClientName, checkVmUid } from './vm-socket-checks.ts';

/** A host as the storage node reports it. */
export interface StorageHostState {
  name: string;
  /** Raised by every fence; connections of an earlier generation are refused. */
  generation: number;
  fenced: boolean;
  /** Connections open on the host's sockets now (its own and its VMs'). */
  connections: number;
  /** The host's own NBD socket (every export, root only). */
  socket: string;
}

/** A VM's socket as the storage node reports it. */
export interface StorageVmSocketState {
  host: string;
  /** The uid the VM's QEMU runs as: the socket's owner. */
  uid: number;
  /** The exports it serves, sorted. */
  exports: string[];
  socket: string;
  /** Connections open on it now. */
  connections: number;
}

/** What HostFencing needs of the NBD server. */
export interface HostSocketServer {
  /** Starts serving volumes on the unix socket `path` to connections of `gate`, under `access` when given. */
  listen(path: string, options: { gate: NbdGate; access?: NbdExportAccess; file: NbdSocketFile }): Promise<void>;
  /** Stops serving on `path`, removes its file and cuts its connections; resolves once none has a request running. */
  closeListener(path: string): Promise<void>;
}

/** Options of `HostFencing.open`. */
export interface HostFencingOptions {
  /** Folder of the per-host socket folders and of `fencing.json`; created when a host registers. */
  hostsDir: string;
  server: HostSocketServer;
  /** How long a fence waits for requests that were already running on volumes. Default 30 000 ms. */
  fenceTimeoutMs?: number;
  /**
   * Give each VM socket to the VM's uid. Default: when this process runs as root (otherwise VMs
   * run as this process's user, as the agent starts them, and it keeps the sockets).
   */
  socketOwners?: boolean;
}

const STATE_FILE = 'fencing.json';
/** Where sockets are bound before they are given their owner and mode (root's alone). */
const STAGING_FOLDER = '.bind';

interface VmSocket {
  uid: number;
  socket: string;
  access: NbdExportAccess;
}

interface Host {
  gate: NbdGate;
  socket: string;
  vms: Map<number, VmSocket>;
}

/** Registered hosts, their sockets, their VMs' sockets and their fences. */
export class HostFencing {
  readonly #options: Readonly<Required<HostFencingOptions>>;
  readonly #hosts = new Map<string, Host>();
  /** Register, fence, unfence and VM socket changes of one host never interleave. */
  readonly #perHost = new KeyedSerialQueue();
  /** Writes of the state file, one after another (each writes every host as it is then). */
  #writes: Promise<unknown> = Promise.resolve();
  #nextBind = 0;

  private constructor(options: HostFencingOptions) {
    this.#options = Object.freeze({ fenceTimeoutMs: 30_000, socketOwners: process.getuid?.() === 0, ...options });
  }

  /** Reads the state file (none: no hosts) and listens on the socket of every host and VM in it. */
  static async open(options: HostFencingOptions): Promise<HostFencing> {
    const fencing = new HostFencing(options);
    // A staging folder left by a crash may hold sockets of a former process.
    await rm(join(options.hostsDir, STAGING_FOLDER), { recursive: true, force: true });
    for (const entry of await readHostStateFile(join(options.hostsDir, STATE_FILE))) {
      await fencing.#serve(entry.name, new NbdGate(`host ${entry.name}`, entry));
      for (const vm of entry.vms) await fencing.#serveVm(entry.name, vm.uid, vm.exports);
    }
    return fencing;
  }

  /** Every registered host, by name. */
  list(): StorageHostState[] {
    return [...this.#hosts.keys()].sort().map((name) => this.get(name));
  }

  /** One host; `STORAGE_HOST_NOT_FOUND` when it is not registered. */
  get(name: string): StorageHostState {
    const { gate, socket } = this.#host(name);
    return { name, generation: gate.generation, fenced: gate.fenced, connections: gate.connectionCount, socket };
  }

  /**
   * Registers a host: its folder and socket, and its entry in the state file. Registering a
   * registered host changes nothing (a fenced host stays fenced).
   */
  register(name: string): Promise<StorageHostState> {
    checkHostName(name);
    return this.#perHost.run(name, async () => {
      await this.#ensureHost(name);
      // Written also when the host was known: a registration whose write failed is retried this way.
      await this.#persist();
      return this.get(name);
    });
  }

  /**
   * Fences a host: from the first instant every request of its connections (on its own socket and
   * its VMs') is refused with NBD_EPERM and its connections are closed; resolves once the raised
   * generation is on disk and no request that started before the fence still runs on a volume
   * (such a request, already past its check, completes: its write lands before this resolves, and
   * its reply is never sent). When that takes longer than `fenceTimeoutMs` it fails with
   * `STORAGE_FENCE_TIMEOUT` and the host stays fenced: call it again until it succeeds before
   * trusting the fence.
   */
  fence(name: string): Promise<StorageHostState> {
    this.get(name);
    return this.#perHost.run(name, async () => {
      const { gate } = this.#host(name);
      const drained = gate.fenced ? gate.quiesced() : gate.fence();
      await this.#persist();
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), this.#options.fenceTimeoutMs)));
      const outcome = await Promise.race([drained, timeout]);
      clearTimeout(timer);
      if (outcome === 'timeout') {
        throw new NubisError(
          'STORAGE_FENCE_TIMEOUT',
          `Host ${name} is fenced, but requests of ${gate.drainingCount} of its closed connection(s) still run on volumes after ${this.#options.fenceTimeoutMs} ms; fence it again before starting its VMs elsewhere`,
          { details: { host: name, draining: gate.drainingCount } },
        );
      }
      return this.get(name);
    });
  }

  /** Lets a fenced host connect again; its generation stays raised, so old connections stay refused. */
  unfence(name: string): Promise<StorageHostState> {
    this.get(name);
    return this.#perHost.run(name, async () => {
      this.#host(name).gate.unfence();
      await this.#persist();
      return this.get(name);
    });
  }

  /** The VM sockets of a host, by uid; `STORAGE_HOST_NOT_FOUND` when it is not registered. */
  vms(host: string): StorageVmSocketState[] {
    return [...this.#host(host).vms.keys()].sort((a, b) => a - b).map((uid) => this.vm(host, uid));
  }

  /** One VM socket; `STORAGE_VM_SOCKET_NOT_FOUND` when the host serves none for `uid`. */
  vm(host: string, uid: number): StorageVmSocketState {
    const vm = this.#host(host).vms.get(checkVmUid(uid));
    if (!vm)
      throw new NubisError('STORAGE_VM_SOCKET_NOT_FOUND', `Host ${host} has no VM socket for uid ${uid} at this storage node`, { details: { host, uid } });
    return { host, uid, exports: vm.access.allowed, socket: vm.socket, connections: vm.access.connectionCount };
  }

  /**
   * Serves the VM of `uid` on `host` (registered first if it is not) exactly `exports`: creates
   * its socket, or replaces its list (a connection on an export taken off the list is cut, and
   * this resolves once none of its requests still runs). Idempotent; the list is on disk when it
   * resolves.
   */
  serveVm(host: string, uid: number, exports: string[]): Promise<StorageVmSocketState> {
    // Every check before anything is made: a socket path over the limit registers no host either.
    vmNbdSocketIn(this.#options.hostsDir, checkHostName(host), checkVmUid(uid));
    const allowed = checkVmExports(exports);
    return this.#perHost.run(host, async () => {
      await this.#ensureHost(host);
      const vm = this.#host(host).vms.get(uid);
      if (vm) await vm.access.replace(allowed);
      else await this.#serveVm(host, uid, allowed);
      await this.#persist();
      return this.vm(host, uid);
    });
  }

  /**
   * Stops serving the VM of `uid` on `host`: its socket is closed and its file removed, its
   * connections cut (resolves once none of their requests still runs). Releasing a socket that
   * does not exist, on a host that is not registered, changes nothing.
   */
  releaseVm(host: string, uid: number): Promise<void> {
    checkHostName(host);
    checkVmUid(uid);
    return this.#perHost.run(host, async () => {
      const vm = this.#hosts.get(host)?.vms.get(uid);
      if (!vm) return;
      await this.#options.server.closeListener(vm.socket);
      await vm.access.closeAll();
      this.#host(host).vms.delete(uid);
      await this.#persist();
    });
  }

  /**
   * Admission on the storage node's TCP listener (nbd-connection.ts `NbdPeerAdmission`): a client
   * certificate named `vm-<uid>.<host>` (vm-socket-checks.ts) gets exactly what that VM's socket
   * would give it, behind its host's gate, so a fence or a release cuts its TCP connections like
   * its socket's. Any other name, or a VM this node does not serve, is refused.
   */
  admitPeer(commonName: string): { gate: NbdGate; access: NbdExportAccess } | string {
    const client = parseVmStorageClientName(commonName);
    if (!client) return 'it names no VM (vm-<uid>.<host>)';
    const host = this.#hosts.get(client.host);
    const vm = host?.vms.get(client.uid);
    if (!host || !vm) return `this storage node serves no VM of uid ${client.uid} on host ${client.host}`;
    return { gate: host.gate, access: vm.access };
  }

  #host(name: string): Host {
    const host = this.#hosts.get(checkHostName(name));
    if (!host) throw new NubisError('STORAGE_HOST_NOT_FOUND', `No host ${name} is registered at this storage node`, { details: { host: name } });
    return host;
  }

  async #ensureHost(name: string): Promise<void> {
    if (!this.#hosts.has(name)) await this.#serve(name, new NbdGate(`host ${name}`));
  }

  /** Listens on a host's own socket (root's alone), in its folder (passable by others). */
  async #serve(name: string, gate: NbdGate): Promise<void> {
    const socket = hostNbdSocketIn(this.#options.hostsDir, name);
    await makeFolder(this.#options.hostsDir, 0o711);
    await makeFolder(join(this.#options.hostsDir, name), 0o711);
    await this.#options.server.listen(socket, { gate, file: await this.#socketFile(0o600) });
    this.#hosts.set(name, { gate, socket, vms: new Map() });
  }

  /** Listens on a VM's socket, the VM's uid's alone, behind its host's gate. */
  async #serveVm(host: string, uid: number, exports: string[]): Promise<void> {
    const socket = vmNbdSocketIn(this.#options.hostsDir, host, uid);
    const { gate, vms } = this.#host(host);
    const access = new NbdExportAccess(`VM uid ${uid} on host ${host}`, exports);
    // The VM's group has the number of its uid (compute/vm-user.ts `vmUserOf`).
    const owner = this.#options.socketOwners ? { uid, gid: uid } : undefined;
    await this.#options.server.listen(socket, { gate, access, file: await this.#socketFile(0o600, owner) });
    vms.set(uid, { uid, socket, access });
  }

  /** A socket file's owner and mode, with a fresh place to bind it in the staging folder. */
  async #socketFile(mode: number, owner?: { uid: number; gid: number }): Promise<NbdSocketFile> {
    const staging = join(this.#options.hostsDir, STAGING_FOLDER);
    await makeFolder(staging, 0o700);
    const bindPath = join(staging, `${process.pid.toString(36)}-${(this.#nextBind++).toString(36)}`);
    return { mode, bindPath, ...(owner ? { owner } : {}) };
  }

  /** Writes every host's state (after any write already under way). */
  #persist(): Promise<void> {
    const write = this.#writes
      .catch(() => undefined)
      .then(() => {
        const hosts: HostStateEntry[] = [...this.#hosts].map(([name, { gate, vms }]) => ({
          name,
          generation: gate.generation,
          fenced: gate.fenced,
          vms: [...vms.values()].map(({ uid, access }) => ({ uid, exports: access.allowed })),
        }));
        return writeHostStateFile(join(this.#options.hostsDir, STATE_FILE), hosts);
      });
    this.#writes = write;
    return write;
  }
}

/** Creates a folder if needed and sets its mode (whatever the umask made of it). */
async function makeFolder(path: string, mode: number): Promise<void> {
  await mkdir(path, { recursive: true, mode });
  await chmod(path, mode);
}
