/**
 * Host-based storage: a `dir` pool is a folder on this host holding one qcow2 file per volume.
 * The host carves its own disks; QEMU opens them as files. The control plane keeps the catalogue
 * and asks the agent of the volume's host to do the file work here.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, rm, rmdir, statfs } from 'node:fs/promises';
import { makePassable } from '../core/data-folder.ts';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { DirPoolInfo, DirVolumeInfo } from '../agent-api/contract.ts';
import { NubisError } from '../core/errors.ts';

const run = promisify(execFile);

/**
 * Grows a volume file through the QEMU that has it open, if a running VM has it; false when none
 * does (the file is then grown here, with qemu-img).
 */
export type GrowLive = (path: string, sizeBytes: number) => Promise<boolean>;

/** The socket a volume restored live reads its backup through, beside its file (live-restore.ts). */
export function liveRestoreSocketOf(volumePath: string): string {
  return volumePath.replace(/\.qcow2$/, '.restore.sock');
}

export class DirPools {
  readonly #root: string;
  readonly #growLive?: GrowLive;

  /** `root`: the folder that holds one folder per pool (`<hostDir>/pools`). */
  constructor(root: string, options: { growLive?: GrowLive } = {}) {
    this.#root = root;
    this.#growLive = options.growLive;
  }

  #poolPath(pool: string): string {
    return join(this.#root, pool);
  }

  volumePath(pool: string, volume: string): string {
    return join(this.#poolPath(pool), `${volume}.qcow2`);
  }

  /**
   * Creates the pool's folder (idempotent) and tells its capacity. VMs' users pass through it to
   * the volume they were given (host/vm-files.ts); others may not list it.
   */
  async ensurePool(pool: string): Promise<DirPoolInfo> {
    await mkdir(this.#poolPath(pool), { recursive: true });
    await makePassable(this.#root);
    await makePassable(this.#poolPath(pool));
    return this.poolInfo(pool);
  }

  async poolInfo(pool: string): Promise<DirPoolInfo> {
    const path = this.#poolPath(pool);
    if (!existsSync(path)) throw new NubisError('POOL_NOT_FOUND', `Dir pool ${pool} has no folder on this host`);
    const fs = await statfs(path);
    return { path, sizeBytes: fs.blocks * fs.bsize, freeBytes: fs.bavail * fs.bsize };
  }

  /** Removes the pool's folder; refused while it holds volumes. */
  async removePool(pool: string): Promise<void> {
    const path = this.#poolPath(pool);
    if (!existsSync(path)) return;
    const left = (await readdir(path)).filter((name) => name.endsWith('.qcow2'));
    if (left.length > 0) throw new NubisError('POOL_NOT_EMPTY', `Dir pool ${pool} still holds ${left.join(', ')} on this host`);
    await rm(join(path, '.tmp'), { recursive: true, force: true });
    await rmdir(path);
  }

  /** A new, empty qcow2 volume; an existing file of that name is never overwritten. */
  async createVolume(pool: string, volume: string, sizeBytes: number): Promise<DirVolumeInfo> {
    await this.poolInfo(pool);
    const path = this.volumePath(pool, volume);
    if (existsSync(path)) throw new NubisError('VOLUME_EXISTS', `Volume ${pool}/${volume} already has a file on this host (${path})`);
    await this.#qemuImg(['create', '-q', '-f', 'qcow2', path, String(sizeBytes)]);
    // Root's alone until a VM that uses it starts (then that VM's user's).
    await chmod(path, 0o600);
    return this.volumeInfo(pool, volume);
  }

  /**
   * A new volume whose file `fill` writes (a restore from a backup); an existing file is never
   * overwritten, and a failed fill leaves no file.
   */
  async fillVolume(pool: string, volume: string, fill: (path: string) => Promise<unknown>): Promise<DirVolumeInfo> {
    await this.poolInfo(pool);
    const path = this.volumePath(pool, volume);
    if (existsSync(path)) throw new NubisError('VOLUME_EXISTS', `Volume ${pool}/${volume} already has a file on this host (${path})`);
    await fill(path);
    await chmod(path, 0o600);
    return this.volumeInfo(pool, volume);
  }

  /**
   * Volume `volume` made of volume `from` of the same pool: a full copy, or `linked` a qcow2
   * overlay over it (copy-on-write: `from`, a template's, is never written again). Never over a file.
   */
  async copyVolume(pool: string, from: string, volume: string, linked: boolean): Promise<DirVolumeInfo> {
    const source = await this.volumeInfo(pool, from);
    const path = this.volumePath(pool, volume);
    if (existsSync(path)) throw new NubisError('VOLUME_EXISTS', `Volume ${pool}/${volume} already has a file on this host (${path})`);
    if (linked) await this.#qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', source.path, path]);
    else await this.#qemuImg(['convert', '-q', '-U', '-f', 'qcow2', '-O', 'qcow2', source.path, path]);
    await chmod(path, 0o600);
    return this.volumeInfo(pool, volume);
  }

  async volumeInfo(pool: string, volume: string): Promise<DirVolumeInfo> {
    const path = this.volumePath(pool, volume);
    if (!existsSync(path)) throw new NubisError('VOLUME_NOT_FOUND', `Volume ${pool}/${volume} has no file on this host`);
    // -U: also while a running VM holds the image lock.
    const info = JSON.parse(await this.#qemuImg(['info', '-U', '--output=json', path])) as { 'virtual-size': number; 'actual-size'?: number };
    return { path, sizeBytes: info['virtual-size'], allocatedBytes: info['actual-size'] ?? 0 };
  }

  async deleteVolume(pool: string, volume: string): Promise<void> {
    await rm(this.volumePath(pool, volume), { force: true });
    // The socket of a live restore whose agent ended before its export did.
    await rm(liveRestoreSocketOf(this.volumePath(pool, volume)), { force: true });
  }

  /**
   * Grows a volume (qcow2 shrinking would cut data off: refused): through the QEMU of a running VM
   * that has it (its guest sees the new size at once), else the file itself.
   */
  async resizeVolume(pool: string, volume: string, sizeBytes: number): Promise<DirVolumeInfo> {
    const current = await this.volumeInfo(pool, volume);
    if (sizeBytes < current.sizeBytes)
      throw new NubisError('VOLUME_SHRINK_REFUSED', `Volume ${pool}/${volume} is ${current.sizeBytes} bytes; dir volumes only grow`);
    if (sizeBytes > current.sizeBytes && !(await this.#growLive?.(current.path, sizeBytes)))
      await this.#qemuImg(['resize', '-q', '-f', 'qcow2', current.path, String(sizeBytes)]);
    return this.volumeInfo(pool, volume);
  }

  async #qemuImg(args: string[]): Promise<string> {
    try {
      return (await run('qemu-img', args)).stdout;
    } catch (error) {
      const stderr = (error as { stderr?: string }).stderr?.trim();
      throw new NubisError('STORAGE_IO_FAILED', `qemu-img ${args[0]} failed: ${stderr || (error as Error).message}`);
    }
  }
}
