/**
 * The storage node's state of hosts (host-fencing.ts), in `<hostsDir>/fencing.json`: every
 * registered host with its generation and fence, and the sockets of its VMs with the exports each
 * may open. Written whole, atomically and durably, mode 0600; read back strictly at start, where a
 * damaged file stops the node rather than forgetting a fence or widening a VM's list.
 *
 * Version 1 (before per-VM sockets) had no `vms`; it is read as hosts without VM sockets.
 */
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import { NubisError } from '../core/errors.ts';
import { checkHostName } from '../core/paths.ts';
import { checkVmExports, checkVmUid } from './vm-socket-checks.ts';

/** One host as the file keeps it. */
export interface HostStateEntry {
  name: string;
  generation: number;
  fenced: boolean;
  /** The host's VM sockets: the VM's uid and the exports it may open. */
  vms: Array<{ uid: number; exports: string[] }>;
}

interface StateFile {
  version: 2;
  hosts: HostStateEntry[];
}

/** The hosts of the state file at `path`, each checked; a missing file is no hosts, a damaged one an error. */
export async function readHostStateFile(path: string): Promise<HostStateEntry[]> {
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
  let content: { version?: unknown; hosts?: unknown };
  try {
    content = JSON.parse(text) as typeof content;
  } catch (error) {
    throw invalid('is not JSON', error);
  }
  if ((content?.version !== 1 && content?.version !== 2) || !Array.isArray(content.hosts)) throw invalid('is not a version 1 or 2 fencing file');
  return content.hosts.map((entry: Partial<HostStateEntry> | null) => {
    try {
      checkHostName(entry?.name);
    } catch (error) {
      throw invalid(`names a bad host ${JSON.stringify(entry?.name)}`, error);
    }
    const { name, generation, fenced } = entry as HostStateEntry;
    if (!Number.isSafeInteger(generation) || generation < 1 || typeof fenced !== 'boolean')
      throw invalid(`has a bad generation or fenced flag for host ${name}`);
    const vms = content.version === 1 ? [] : entry?.vms;
    if (!Array.isArray(vms)) throw invalid(`has no list of VM sockets for host ${name}`);
    const uids = new Set<number>();
    const checked = vms.map((vm: { uid?: unknown; exports?: unknown } | null) => {
      try {
        const uid = checkVmUid(vm?.uid);
        if (uids.has(uid)) throw new Error(`uid ${uid} appears twice`);
        uids.add(uid);
        return { uid, exports: checkVmExports(vm?.exports) };
      } catch (error) {
        throw invalid(`has a bad VM socket for host ${name}: ${(error as Error).message}`, error);
      }
    });
    return { name, generation, fenced, vms: checked };
  });
}

/** Replaces the state file at `path` with `hosts`, durably (see `writeFileDurably`). */
export function writeHostStateFile(path: string, hosts: HostStateEntry[]): Promise<void> {
  const content: StateFile = { version: 2, hosts };
  return writeFileDurably(path, `${JSON.stringify(content, null, 2)}\n`);
}

/** Replaces `path` atomically and durably: a temporary file (mode 0600), fsync, rename, fsync of the folder. */
async function writeFileDurably(path: string, content: string): Promise<void> {
  const folder = dirname(path);
  await mkdir(folder, { recursive: true });
  const temporary = `${path}.tmp`;
  const file = await open(temporary, 'w', 0o600);
  try {
    // The mode of `open` applies only to a new file: a temporary left by a crash keeps its own.
    await file.chmod(0o600);
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
