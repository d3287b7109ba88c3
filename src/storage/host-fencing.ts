/**
 * The hosts a storage node serves, each on an NBD socket of its own, and I/O fencing per host
 * (high availability): before the control plane restarts a failed host's VMs elsewhere it fences
 * that host here, so that a QEMU still running on a cut-off host can never write to a volume that
 * a new QEMU also writes.
 *
 * Every host has an `NbdGate` (nbd/nbd-gate.ts): a generation and a fenced flag. Connections on
 * the host's socket are tagged with the generation at accept; a fence raises it, marks the host
 * fenced and closes its connections at once; every request checks its tag, so a request of an
 * earlier generation gets NBD_EPERM; while fenced, the socket refuses export selection with the
 * reason. The state lives in `<hostsDir>/fencing.json` (written atomically), so a restarted node
 * keeps a fenced host fenced and listens for every registered host again.
 */
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { NubisError } from '../core/errors.ts';
import { checkHostName, hostNbdSocketIn } from '../core/paths.ts';
import { KeyedSerialQueue } from '../core/serial-queue.ts';
import { NbdGate } from './nbd/nbd-gate.ts';

/** A host as the storage node reports it. */
export interface StorageHostState {
  name: string;
  /** Raised by every fence; connections of an earlier generation are refused. */
  generation: number;
  fenced: boolean;
  /** Connections open on the host's socket now. */
  connections: number;
  /** The host's NBD socket. */
  socket: string;
}

/** Options of `HostFencing.open`. */
export interface HostFencingOptions {
  /** Folder of the per-host socket folders and of `fencing.json`; created when a host registers. */
  hostsDir: string;
  /** Starts serving every volume on `path`, to the connections of `gate` only. */
  listen: (path: string, gate: NbdGate) => Promise<void>;
  /** How long a fence waits for requests that were already running on volumes. Default 30 000 ms. */
  fenceTimeoutMs?: number;
}

/** The file's content: one entry per registered host. */
interface FencingFile {
  version: 1;
  hosts: Array<{ name: string; generation: number; fenced: boolean }>;
}

const STATE_FILE = 'fencing.json';

/** Registered hosts, their sockets and their fences. */
export class HostFencing {
  readonly #options: Readonly<Required<HostFencingOptions>>;
  readonly #hosts = new Map<string, { gate: NbdGate; socket: string }>();
  /** Register, fence and unfence of one host never interleave. */
  readonly #perHost = new KeyedSerialQueue();
  /** Writes of the state file, one after another (each writes every host as it is then). */
  #writes: Promise<unknown> = Promise.resolve();

  private constructor(options: HostFencingOptions) {
    this.#options = Object.freeze({ fenceTimeoutMs: 30_000, ...options });
  }

  /** Reads the state file (none: no hosts) and listens on the socket of every host in it. */
  static async open(options: HostFencingOptions): Promise<HostFencing> {
    const fencing = new HostFencing(options);
    for (const entry of await readStateFile(join(options.hostsDir, STATE_FILE))) {
      await fencing.#serve(entry.name, new NbdGate(`host ${entry.name}`, entry));
    }
    return fencing;
  }

  /** Every registered host, by name. */
  list(): StorageHostState[] {
    return [...this.#hosts.keys()].sort().map((name) => this.get(name));
  }

  /** One host; `STORAGE_HOST_NOT_FOUND` when it is not registered. */
  get(name: string): StorageHostState {
    const host = this.#hosts.get(checkHostName(name));
    if (!host) throw new NubisError('STORAGE_HOST_NOT_FOUND', `No host ${name} is registered at this storage node`, { details: { host: name } });
    return { name, generation: host.gate.generation, fenced: host.gate.fenced, connections: host.gate.connectionCount, socket: host.socket };
  }

  /**
   * Registers a host: its folder and socket, and its entry in the state file. Registering a
   * registered host changes nothing (a fenced host stays fenced).
   */
  register(name: string): Promise<StorageHostState> {
    checkHostName(name);
    return this.#perHost.run(name, async () => {
      if (!this.#hosts.has(name)) await this.#serve(name, new NbdGate(`host ${name}`));
      // Written also when the host was known: a registration whose write failed is retried this way.
      await this.#persist();
      return this.get(name);
    });
  }

  /**
   * Fences a host: from the first instant every request of its connections is refused with
   * NBD_EPERM and its connections are closed; resolves once the raised generation is on disk and
   * no request that started before the fence still runs on a volume (such a request, already
   * past its check, completes: its write lands before this resolves, and its reply is never
   * sent). When that takes longer than `fenceTimeoutMs` it fails with `STORAGE_FENCE_TIMEOUT`
   * and the host stays fenced: call it again until it succeeds before trusting the fence.
   */
  fence(name: string): Promise<StorageHostState> {
    this.get(name);
    return this.#perHost.run(name, async () => {
      const { gate } = this.#hosts.get(name)!;
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
      this.#hosts.get(name)!.gate.unfence();
      await this.#persist();
      return this.get(name);
    });
  }

  async #serve(name: string, gate: NbdGate): Promise<void> {
    const socket = hostNbdSocketIn(this.#options.hostsDir, name);
    await mkdir(join(this.#options.hostsDir, name), { recursive: true, mode: 0o755 });
    await this.#options.listen(socket, gate);
    this.#hosts.set(name, { gate, socket });
  }

  /** Writes every host's state (after any write already under way). */
  #persist(): Promise<void> {
    const write = this.#writes
      .catch(() => undefined)
      .then(() => {
        const content: FencingFile = {
          version: 1,
          hosts: [...this.#hosts].map(([name, { gate }]) => ({ name, generation: gate.generation, fenced: gate.fenced })),
        };
        return writeFileDurably(join(this.#options.hostsDir, STATE_FILE), `${JSON.stringify(content, null, 2)}\n`);
      });
    this.#writes = write;
    return write;
  }
}

/** The hosts of a state file, each checked; a missing file is no hosts, a damaged one an error. */
async function readStateFile(path: string): Promise<FencingFile['hosts']> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  const invalid = (why: string, cause?: unknown) =>
    new NubisError('STORAGE_HOSTS_FILE_DAMAGED', `${path} ${why}; fix or restore it (deleting it would forget which hosts are fenced)`, {
      cause,
      details: { path },
    });
  let content: FencingFile;
  try {
    content = JSON.parse(text) as FencingFile;
  } catch (error) {
    throw invalid('is not JSON', error);
  }
  if (content?.version !== 1 || !Array.isArray(content.hosts)) throw invalid('is not a version 1 fencing file');
  for (const entry of content.hosts) {
    try {
      checkHostName(entry?.name);
    } catch (error) {
      throw invalid(`names a bad host ${JSON.stringify(entry?.name)}`, error);
    }
    if (!Number.isSafeInteger(entry.generation) || entry.generation < 1 || typeof entry.fenced !== 'boolean') {
      throw invalid(`has a bad generation or fenced flag for host ${entry.name}`);
    }
  }
  return content.hosts;
}

/** Replaces `path` atomically and durably: a temporary file, fsync, rename, fsync of the folder. */
async function writeFileDurably(path: string, content: string): Promise<void> {
  const folder = join(path, '..');
  await mkdir(folder, { recursive: true });
  const temporary = `${path}.tmp`;
  const file = await open(temporary, 'w', 0o644);
  try {
    await file.writeFile(content);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temporary, path);
  // The rename itself is durable only once the folder's entry is on disk.
  const dir = await open(folder, 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
