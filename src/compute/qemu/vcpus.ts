/**
 * A VM's vCPUs in QEMU: the `-smp` option a launch starts it with, and vCPUs hot-added to a
 * running one over QMP (QEMU qapi/machine.json: `query-hotpluggable-cpus` lists every possible
 * vCPU with the driver and the socket-id/core-id/thread-id properties that place it, a present
 * one with its `qom-path`; `device_add` with those plugs one in, and the guest's ACPI CPU hotplug
 * announces it to the guest, which must bring it online).
 *
 * vCPUs are always added in topology order (socket, then core, then thread), which is the order
 * in which `-smp cpus=N` creates the first N: a VM grown to N vCPUs at run time has exactly the
 * vCPUs a QEMU started with `-smp cpus=N` has, so a migration's destination, a restart and an HA
 * restart start it with `-smp cpus=N` and the same vCPUs (APIC ids) are present.
 */
import { NubisError } from '../../core/errors.ts';
import type { QmpClient } from '../qmp/qmp-client.ts';
import { checkedVcpuLayout, type VcpuFields } from '../cpu-topology.ts';

type Qmp = Pick<QmpClient, 'execute'>;

/**
 * `-smp cpus=N,maxcpus=M,sockets=S,cores=C,threads=T` for a spec's vCPUs. Checked again here,
 * where the command is built: a layout QEMU would refuse (or reinterpret) starts nothing.
 *
 * The default layout (N present of N, one socket of N cores, one thread) stays `-smp N`, as every
 * VM was started before layouts existed: QEMU reads both the same on machine types from 6.2 on
 * (cores preferred over sockets; checked with query-hotpluggable-cpus), and a VM's command line
 * is part of its measured launch, whose recorded digest must not change under a running fleet.
 */
export function smpOption(vm: VcpuFields & { name: string }): string {
  const { cpus, maxCpus, cpuTopology: t } = checkedVcpuLayout(vm.name, vm);
  const defaultLayout = maxCpus === cpus && t.sockets === 1 && t.cores === maxCpus && t.threads === 1;
  if (defaultLayout) return String(cpus);
  return `cpus=${cpus},maxcpus=${maxCpus},sockets=${t.sockets},cores=${t.cores},threads=${t.threads}`;
}

/** One entry of `query-hotpluggable-cpus`. */
export interface HotpluggableCpu {
  type: string;
  'vcpus-count': number;
  props: Record<string, number>;
  'qom-path'?: string;
}

/** Topology properties from the outermost in; QEMU gives the ones its machine has (x86: socket, die, module, core, thread). */
const PLACEMENT_ORDER = ['node-id', 'drawer-id', 'book-id', 'socket-id', 'die-id', 'cluster-id', 'module-id', 'core-id', 'thread-id'];
/** What a driver name and a property may look like before they go into `device_add`. */
const DRIVER_FORMAT = /^[a-z0-9][a-z0-9_.-]{0,63}$/;
const PROPERTY_FORMAT = /^[a-z]+(-[a-z]+)*-id$/;

/** Slots in topology order: socket, then core, then thread (as `-smp` fills them). */
export function inTopologyOrder(slots: readonly HotpluggableCpu[]): HotpluggableCpu[] {
  const rank = (slot: HotpluggableCpu) => PLACEMENT_ORDER.map((key) => slot.props[key] ?? 0);
  return [...slots].sort((a, b) => {
    const [ra, rb] = [rank(a), rank(b)];
    for (let index = 0; index < ra.length; index++) if (ra[index] !== rb[index]) return ra[index] - rb[index];
    return 0;
  });
}

/** The vCPUs present in the machine now (QMP `query-hotpluggable-cpus`). */
export async function presentVcpus(qmp: Qmp): Promise<number> {
  const slots = await qmp.execute<HotpluggableCpu[]>('query-hotpluggable-cpus');
  return slots.filter((slot) => slot['qom-path'] !== undefined).reduce((sum, slot) => sum + slot['vcpus-count'], 0);
}

/**
 * The `device_add` arguments that bring a VM from the vCPUs present to `wanted`: the first free
 * slots in topology order, each with the id `vcpu<N>` (N its place among all slots, so an id
 * never repeats on a QEMU, also after a migration's destination started them with -smp). Empty
 * when `wanted` are present already; an error when the slots run out or QEMU names a driver or
 * property this code does not know the shape of.
 */
export function vcpuAdditions(slots: readonly HotpluggableCpu[], wanted: number, vmName: string): Array<Record<string, string | number>> {
  const ordered = inTopologyOrder(slots);
  let present = ordered.filter((slot) => slot['qom-path'] !== undefined).reduce((sum, slot) => sum + slot['vcpus-count'], 0);
  const additions: Array<Record<string, string | number>> = [];
  for (const [index, slot] of ordered.entries()) {
    if (present >= wanted) break;
    if (slot['qom-path'] !== undefined) continue;
    if (!DRIVER_FORMAT.test(slot.type))
      throw new NubisError('QEMU_INVALID_OPTION', `QEMU offers a vCPU of driver ${JSON.stringify(slot.type).slice(0, 80)}, which Nubis does not plug`);
    for (const [key, value] of Object.entries(slot.props))
      if (!PROPERTY_FORMAT.test(key) || !Number.isInteger(value) || value < 0 || value > 4096)
        throw new NubisError(
          'QEMU_INVALID_OPTION',
          `QEMU places a vCPU by ${JSON.stringify(key).slice(0, 40)}=${JSON.stringify(value).slice(0, 20)}, which Nubis does not pass on`,
        );
    additions.push({ driver: slot.type, id: `vcpu${index}`, ...slot.props });
    present += slot['vcpus-count'];
  }
  if (present < wanted)
    throw new NubisError('VM_CPUS_INVALID', `VM ${vmName}: its QEMU has room for ${present} vCPUs, not ${wanted}; its maximum is fixed when it starts`);
  return additions;
}

/**
 * Hot-adds vCPUs until `wanted` are present and returns how many were added (0: already there).
 * The guest sees each through ACPI; bringing it online is the guest's part (the tiny guest does
 * at once, as udev's usual rule does on a distribution).
 */
export async function hotAddVcpus(qmp: Qmp, wanted: number, vmName: string): Promise<number> {
  const additions = vcpuAdditions(await qmp.execute<HotpluggableCpu[]>('query-hotpluggable-cpus'), wanted, vmName);
  for (const device of additions) await qmp.execute('device_add', device);
  return additions.length;
}
