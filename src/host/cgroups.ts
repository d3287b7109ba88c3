/**
 * A cgroup per VM, for its CPU controls: a bandwidth cap (`limitPercent` of one host CPU), a
 * weight against the other VMs when CPUs are short, and pinning to host CPUs. The agent puts each
 * QEMU in `nubis/vm-<id>` right after starting it and removes the group when QEMU is gone.
 *
 * Both cgroup versions are met in practice: a stock Debian 12 host mounts the unified (v2)
 * hierarchy at /sys/fs/cgroup, while some hosts (this test bed among them, see HOST-FACTS) mount
 * the v1 controllers one per folder and leave v2 empty. `detectCgroups` reads the mount table and
 * says which this host uses, or why it has none, and the two write their files differently:
 *
 * | control | v2 file | v1 file (hierarchy) |
 * | --- | --- | --- |
 * | cap | `cpu.max`: "QUOTA PERIOD" or "max PERIOD" | `cpu.cfs_quota_us` (-1: none), `cpu.cfs_period_us` (cpu) |
 * | weight | `cpu.weight` 1..10000, 100 by default | `cpu.shares` = weight x 1024 / 100 (cpu) |
 * | pinning | `cpuset.cpus` | `cpuset.cpus` and `cpuset.mems`, both set before a task joins (cpuset) |
 * | CPU used | `cpu.stat` usage_usec | `cpuacct.usage`, nanoseconds (cpuacct) |
 *
 * Only the CPU controllers are joined: a VM's memory stays accounted where the agent's is.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { NubisError, messageOf } from '../core/errors.ts';
import { CPU_LIST_PATTERN, type CpuControls, highestCpuOf } from '../compute/vm-spec.ts';

/** The CFS period every cap is expressed in: 100 ms, the kernel's default. */
export const CPU_PERIOD_US = 100_000;
/** The weight of a VM that asks for none (cgroup v2's default). */
export const DEFAULT_CPU_WEIGHT = 100;
/** Under each hierarchy: the folder that holds one group per VM. */
const NUBIS_GROUP = 'nubis';

/** The CPU hierarchies of this host. */
export type CgroupLayout = { version: 2; root: string } | { version: 1; cpu: string; cpuacct: string; cpuset: string } | { version: 'none'; reason: string };

/**
 * Which cgroup version this host gives its CPU controllers, from a mount table in the format of
 * /proc/self/mounts. v2 counts only when its hierarchy offers the `cpu` controller (a v2 mount
 * beside v1 controllers is empty); v1 needs cpu, cpuacct and cpuset mounted (together or apart).
 */
export async function detectCgroups(
  mounts = '/proc/self/mounts',
  readControllers = (root: string) => readFile(join(root, 'cgroup.controllers'), 'utf8'),
): Promise<CgroupLayout> {
  const lines = (await readFile(mounts, 'utf8')).split('\n').map((line) => line.split(' '));
  for (const [, path, type] of lines) {
    if (type !== 'cgroup2') continue;
    const controllers = await readControllers(path).catch(() => '');
    if (controllers.split(/\s+/).includes('cpu')) return { version: 2, root: path };
  }
  const v1: Partial<Record<'cpu' | 'cpuacct' | 'cpuset', string>> = {};
  for (const [, path, type, options] of lines) {
    if (type !== 'cgroup') continue;
    for (const option of options.split(',')) if (option === 'cpu' || option === 'cpuacct' || option === 'cpuset') v1[option] ??= path;
  }
  if (v1.cpu && v1.cpuacct && v1.cpuset) return { version: 1, cpu: v1.cpu, cpuacct: v1.cpuacct, cpuset: v1.cpuset };
  const missing = (['cpu', 'cpuacct', 'cpuset'] as const).filter((name) => !v1[name]);
  return { version: 'none', reason: `no cgroup v2 hierarchy with the cpu controller, and no cgroup v1 ${missing.join(', ')} mounted` };
}

/** How this host describes its cgroups to a person (`nubis host show`, the agent's log). */
export function describeCgroups(layout: CgroupLayout): string {
  if (layout.version === 2) return `cgroup v2 at ${layout.root}`;
  if (layout.version === 1) return `cgroup v1 (cpu at ${layout.cpu}, cpuacct at ${layout.cpuacct}, cpuset at ${layout.cpuset})`;
  return `no CPU controls: ${layout.reason}`;
}

/** A VM id as it may name a folder: the spec's format, checked again where the path is built. */
const VM_ID = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** The VMs' cgroups of one host. */
export class VmCgroups {
  readonly layout: CgroupLayout;
  /** How many CPUs this host has: a pin names only these. */
  readonly #hostCpus: number;
  /** Removals still waiting for a group to empty, by VM: a new start of that VM waits for them. */
  readonly #removing = new Map<string, Promise<void>>();

  constructor(layout: CgroupLayout, hostCpus = cpus().length) {
    this.layout = layout;
    this.#hostCpus = hostCpus;
  }

  /** Whether CPU controls can be applied here. */
  get available(): boolean {
    return this.layout.version !== 'none';
  }

  /**
   * Puts process `pid` (a VM's QEMU, with all its threads) in the VM's group, with `controls`
   * applied first so that it never runs there unbounded.
   */
  async place(vmId: string, pid: number, controls: CpuControls | undefined): Promise<void> {
    if (!Number.isInteger(pid) || pid <= 0) throw new NubisError('VALIDATION_FAILED', `Not a process id: ${pid}`);
    const layout = this.#usable(controls);
    if (!layout) return;
    await this.#removing.get(vmId); // the group of its last QEMU must not vanish under the new one
    const dirs = await this.#makeGroup(layout, vmId);
    await this.apply(vmId, controls);
    for (const dir of dirs) await write(dir, 'cgroup.procs', String(pid));
  }

  /** Sets the VM's CPU controls; a control left out is set back to the host's default. */
  async apply(vmId: string, controls: CpuControls | undefined): Promise<void> {
    checkControls(controls, this.#hostCpus);
    const layout = this.#usable(controls);
    if (!layout) return;
    const quota = controls?.limitPercent === undefined ? undefined : (controls.limitPercent * CPU_PERIOD_US) / 100;
    const weight = controls?.weight ?? DEFAULT_CPU_WEIGHT;
    if (layout.version === 2) {
      const dir = groupDir(layout.root, vmId);
      await write(dir, 'cpu.max', `${quota ?? 'max'} ${CPU_PERIOD_US}`);
      await write(dir, 'cpu.weight', String(weight));
      await write(dir, 'cpuset.cpus', controls?.pin ?? '');
    } else {
      const cpu = groupDir(layout.cpu, vmId);
      await write(cpu, 'cpu.cfs_period_us', String(CPU_PERIOD_US));
      await write(cpu, 'cpu.cfs_quota_us', String(quota ?? -1));
      await write(cpu, 'cpu.shares', String(Math.max(2, Math.round((weight * 1024) / 100))));
      const cpuset = groupDir(layout.cpuset, vmId);
      await write(cpuset, 'cpuset.cpus', controls?.pin ?? (await readFile(join(layout.cpuset, NUBIS_GROUP, 'cpuset.cpus'), 'utf8')).trim());
    }
  }

  /** CPU time the VM's group has used, in microseconds; undefined where there is no group. */
  async cpuUsageUs(vmId: string): Promise<number | undefined> {
    if (this.layout.version === 'none') return undefined;
    try {
      if (this.layout.version === 2) {
        const stat = await readFile(join(groupDir(this.layout.root, vmId), 'cpu.stat'), 'utf8');
        const usage = /^usage_usec (\d+)$/m.exec(stat);
        return usage ? Number(usage[1]) : undefined;
      }
      return Math.round(Number((await readFile(join(groupDir(this.layout.cpuacct, vmId), 'cpuacct.usage'), 'utf8')).trim()) / 1000);
    } catch {
      return undefined;
    }
  }

  /**
   * Removes the VM's group once its QEMU is gone. A QEMU that has just ended can still be a zombie
   * its parent has not reaped yet, and the kernel keeps a group with a zombie in it busy: so a busy
   * group is tried again for up to `waitMs`. A group that still holds a process after that stays
   * (it is not ours to end). Awaited before a stopped VM is reported, so a new start of the same
   * VM never finds the group half gone.
   */
  remove(vmId: string, waitMs = 5_000): Promise<void> {
    const pending = this.#removing.get(vmId);
    if (pending) return pending;
    const removal = this.#removeGroups(vmId, Date.now() + waitMs).finally(() => this.#removing.delete(vmId));
    this.#removing.set(vmId, removal);
    return removal;
  }

  async #removeGroups(vmId: string, deadline: number): Promise<void> {
    for (const root of this.#roots()) {
      for (;;) {
        try {
          await rmdir(groupDir(root, vmId));
          break;
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'EBUSY' || Date.now() >= deadline) break; // gone already, or kept busy
          await delay(20);
        }
      }
    }
  }

  /** The layout when controls can be applied; undefined when there are none to apply and no cgroups. */
  #usable(controls: CpuControls | undefined): Exclude<CgroupLayout, { version: 'none' }> | undefined {
    if (this.layout.version !== 'none') return this.layout;
    if (controls && Object.keys(controls).length > 0)
      throw new NubisError(
        'HOST_CPU_CONTROLS_UNAVAILABLE',
        `This host cannot apply CPU controls: ${this.layout.reason}; remove them (vm set --cpu-limit none ...) or place the VM elsewhere`,
      );
    return undefined;
  }

  #roots(): string[] {
    if (this.layout.version === 2) return [this.layout.root];
    if (this.layout.version === 1) return [...new Set([this.layout.cpu, this.layout.cpuacct, this.layout.cpuset])];
    return [];
  }

  /** Makes `nubis/vm-<id>` in every hierarchy (and `nubis` with its controllers), returning the VM's folders. */
  async #makeGroup(layout: Exclude<CgroupLayout, { version: 'none' }>, vmId: string): Promise<string[]> {
    const dirs: string[] = [];
    for (const root of this.#roots()) {
      const parent = join(root, NUBIS_GROUP);
      if (!existsSync(parent)) {
        await mkdir(parent, { recursive: true });
        // v1 cpuset: a folder takes no task until it has CPUs and memory nodes; they come from the root.
        if (layout.version === 1 && root === layout.cpuset) await copyCpuset(root, parent);
      }
      if (layout.version === 2) {
        // v2: children see a controller only when their parent hands it down.
        await write(root, 'cgroup.subtree_control', '+cpu +cpuset');
        await write(parent, 'cgroup.subtree_control', '+cpu +cpuset');
      }
      const dir = groupDir(root, vmId);
      await mkdir(dir, { recursive: true });
      if (layout.version === 1 && root === layout.cpuset) await copyCpuset(parent, dir);
      dirs.push(dir);
    }
    return dirs;
  }
}

/** Checks controls again where their values become file contents (the API checked them first). */
function checkControls(controls: CpuControls | undefined, hostCpus: number): void {
  if (!controls) return;
  const { limitPercent, weight, pin } = controls;
  if (limitPercent !== undefined && !(Number.isInteger(limitPercent) && limitPercent >= 1 && limitPercent <= 6400))
    throw new NubisError('VALIDATION_FAILED', `CPU limit ${limitPercent}% is not a whole percentage from 1 to 6400`);
  if (weight !== undefined && !(Number.isInteger(weight) && weight >= 1 && weight <= 10_000))
    throw new NubisError('VALIDATION_FAILED', `CPU weight ${weight} is not a whole number from 1 to 10000`);
  if (pin === undefined) return;
  if (!new RegExp(CPU_LIST_PATTERN).test(pin)) throw new NubisError('VALIDATION_FAILED', `CPU list ${JSON.stringify(pin)} is not like 0-3,6`);
  const highest = highestCpuOf(pin);
  if (highest >= hostCpus)
    throw new NubisError(
      'HOST_CPU_CONTROLS_UNAVAILABLE',
      `CPU ${highest} of --cpu-pin ${pin} is not on this host, which has CPUs 0-${hostCpus - 1}; pin to those, or place the VM on a larger host`,
    );
}

function groupDir(root: string, vmId: string): string {
  if (!VM_ID.test(vmId)) throw new NubisError('VALIDATION_FAILED', `Not a VM id: ${JSON.stringify(vmId)}`);
  return join(root, NUBIS_GROUP, `vm-${vmId}`);
}

async function copyCpuset(from: string, to: string): Promise<void> {
  for (const file of ['cpuset.cpus', 'cpuset.mems']) await write(to, file, (await readFile(join(from, file), 'utf8')).trim());
}

/** Writes a cgroup file, naming the file and the kernel's refusal when it says no. */
async function write(dir: string, file: string, value: string): Promise<void> {
  try {
    await writeFile(join(dir, file), value);
  } catch (error) {
    throw new NubisError('HOST_CPU_CONTROLS_UNAVAILABLE', `Cannot write ${JSON.stringify(value)} to ${join(dir, file)}: ${messageOf(error)}`, { cause: error });
  }
}
