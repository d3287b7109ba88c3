/**
 * A VM's CPU controls between the API's fields (`cpuLimit`, `cpuWeight`, `cpuPin`: create sets
 * them, update changes them, null takes one away) and its spec's `cpuControls`, which the host
 * applies in the VM's cgroup (host/cgroups.ts).
 */
import type { CpuControls, VmSpec } from '../compute/vm-spec.ts';
import { NubisError } from '../core/errors.ts';

/** The controls as the API names them; null (on update) takes one away. */
export interface CpuControlFields {
  cpuLimit?: number | null;
  cpuWeight?: number | null;
  cpuPin?: string | null;
}

/** Whether an update names any CPU control. */
export function changesCpuControls(change: CpuControlFields): boolean {
  return change.cpuLimit !== undefined || change.cpuWeight !== undefined || change.cpuPin !== undefined;
}

/**
 * The controls after `change` over `current` (none: `undefined`), checked against the VM's
 * vCPUs: a cap above 100% per vCPU could never bind, and is refused rather than kept as a promise.
 */
export function cpuControlsAfter(current: CpuControls | undefined, change: CpuControlFields, vm: { name: string; cpus: number }): CpuControls | undefined {
  const next: CpuControls = { ...current };
  const set = <K extends keyof CpuControls>(key: K, value: CpuControls[K] | null | undefined) => {
    if (value === null) delete next[key];
    else if (value !== undefined) next[key] = value;
  };
  set('limitPercent', change.cpuLimit);
  set('weight', change.cpuWeight);
  set('pin', change.cpuPin);
  if (next.limitPercent !== undefined && next.limitPercent > vm.cpus * 100)
    throw new NubisError(
      'VALIDATION_FAILED',
      `A CPU limit of ${next.limitPercent}% is more than VM ${vm.name}'s ${vm.cpus} vCPU(s) can use (${vm.cpus * 100}%); ask for at most that, or for more vCPUs`,
    );
  return Object.keys(next).length > 0 ? next : undefined;
}

/** The API's view of a spec's controls. */
export function cpuControlFields(spec: Pick<VmSpec, 'cpuControls'>): { cpuLimit?: number; cpuWeight?: number; cpuPin?: string } {
  const controls = spec.cpuControls ?? {};
  return {
    ...(controls.limitPercent !== undefined ? { cpuLimit: controls.limitPercent } : {}),
    ...(controls.weight !== undefined ? { cpuWeight: controls.weight } : {}),
    ...(controls.pin !== undefined ? { cpuPin: controls.pin } : {}),
  };
}
