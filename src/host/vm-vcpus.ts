/**
 * A VM's vCPUs on its host: a change of the count present, applied to its QEMU at once when it
 * runs (hot-added, compute/qemu/vcpus.ts) and to its spec for every later start.
 *
 * Fewer vCPUs are refused while the VM runs, and taken at the next start when it is stopped. A
 * live removal (QMP `device_del`) is only a request: the guest must take the vCPU offline and
 * eject it through ACPI, which it may do late or never (a busy or unwilling guest, or one
 * without CPU hot-unplug), and the vCPUs a QEMU was started with (`-smp cpus=N`) have no device
 * id to remove them by. A change half done would leave the spec's count and the running QEMU
 * apart, and a migration's destination started from the spec would then not match its source.
 */
import { vcpusAfter, type VcpuSettings } from '../compute/cpu-topology.ts';
import { hotAddVcpus, presentVcpus } from '../compute/qemu/vcpus.ts';
import type { QmpClient } from '../compute/qmp/qmp-client.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import { NubisError } from '../core/errors.ts';

/** The spec fields after `settings` (checked against the VM's maximum), for `ManagedVm.tune`. */
export function vcpuChange(spec: VmSpec, settings: VcpuSettings): Pick<VmSpec, 'cpus' | 'maxCpus' | 'cpuTopology'> {
  return vcpusAfter(spec.name, spec, settings.cpus);
}

/**
 * Brings a running QEMU to `cpus` vCPUs: hot-adds the missing ones; refuses fewer than are
 * present (VM_CPUS_LIVE_DECREASE, see above), changing nothing.
 */
export async function applyVcpus(qmp: Pick<QmpClient, 'execute'>, vmName: string, cpus: number): Promise<void> {
  const present = await presentVcpus(qmp);
  if (cpus < present)
    throw new NubisError(
      'VM_CPUS_LIVE_DECREASE',
      `VM ${vmName} runs with ${present} vCPUs; vCPUs are not removed from a running guest (it would have to give them up). Stop it, set --cpus ${cpus}, then start it`,
    );
  await hotAddVcpus(qmp, cpus, vmName);
}
