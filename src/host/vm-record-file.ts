/**
 * What survives an agent restart about a VM: its record in `<vmDir>/vm.json`, written whole and
 * one write after another.
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { VmSpec } from '../compute/vm-spec.ts';
import type { VmStatus } from '../agent-api/contract.ts';

/** A VM's spec, desired state and last actual state, as kept on disk. */
export interface VmRecord {
  spec: VmSpec;
  desired: 'running' | 'stopped';
  status: VmStatus;
  /** Root ports of disks hot-plugged since this QEMU started (disk id -> port). */
  hotplugged?: Record<string, string>;
  /** Destination of a migration: the disk copies made here for the source to mirror into. */
  mirrorCopies?: string[];
}

/**
 * The record file of one VM's folder. State changes save without waiting, so writes are chained:
 * two writes sharing the temporary file would make one rename fail. Each write takes the record
 * as it is by then; once the folder is removed nothing is written again, so no deleted folder
 * comes back.
 */
export class VmRecordFile {
  readonly dir: string;
  #last: Promise<void> = Promise.resolve();
  #removed = false;

  constructor(dir: string) {
    this.dir = dir;
  }

  /** Reads the record of the VM folder `dir`. */
  static async read(dir: string): Promise<VmRecord> {
    return JSON.parse(await readFile(join(dir, 'vm.json'), 'utf8')) as VmRecord;
  }

  /** Writes `record` once every earlier write has ended. */
  save(record: VmRecord): Promise<void> {
    const write = async (): Promise<void> => {
      if (this.#removed) return;
      await mkdir(this.dir, { recursive: true });
      const path = join(this.dir, 'vm.json');
      // Write then rename, so a crash mid-write never leaves a torn record.
      // Its own only: the VM's folder is passable by VMs' users (core/data-folder.ts).
      await writeFile(`${path}.tmp`, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
      await rename(`${path}.tmp`, path);
    };
    const saved = this.#last.catch(() => undefined).then(write);
    this.#last = saved;
    return saved;
  }

  /** Removes the VM's folder once no write is under way; later saves write nothing. */
  async remove(): Promise<void> {
    this.#removed = true;
    await this.#last.catch(() => undefined);
    await rm(this.dir, { recursive: true, force: true });
  }
}
