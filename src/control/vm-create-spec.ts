/**
 * What a VM create resolved before anything is recorded, and the spec a new VM's host starts it
 * from (control/vms.ts runs the create).
 */
import type { PortForward, VmSpec } from '../compute/vm-spec.ts';
import { newMac } from '../core/ids.ts';
import type { ImagesTable, NetworksTable, NicsTable } from '../state/schema.ts';
import type { VmCreateRequest } from '../wire/schemas.ts';
import type { ImageCatalogue } from './images.ts';
import type { SecurityGroupService } from './security-groups.ts';
import { platformSpecOf } from './trusted-launch.ts';
import { cpuControlsAfter } from './vm-cpu-controls.ts';
import type { DiskPlan } from './vm-disk-plan.ts';
import { memorySpecOf } from './vm-memory.ts';
import { maxCpusOfRequest, vcpuSpecOf } from './vm-vcpus.ts';

/** What a create resolved before anything is recorded. */
export interface CreatePlan extends DiskPlan {
  projectId: string;
  placementGroupId: string | null;
  haGroupId: string | null;
  image: ImagesTable;
  forwards: PortForward[];
  networks: Array<{ row: NetworksTable; ip?: string }>;
  trustedLaunch: VmSpec['trustedLaunch'];
}

/** A NIC allocated for a new VM, with its network and its port's firewall. */
export interface AllocatedNic {
  nic: NicsTable;
  network: NetworksTable;
  firewall?: Awaited<ReturnType<SecurityGroupService['firewallOf']>>[number];
}

/**
 * The spec the host starts a new VM from: `files` are its image's (ImageCatalogue.filesOf),
 * `unixUid` the user its processes run as (VmUidCounter).
 */
export function createSpecOf(
  vm: { id: string; unixUid: number },
  request: VmCreateRequest,
  plan: CreatePlan,
  nics: AllocatedNic[],
  files: ReturnType<ImageCatalogue['filesOf']>,
): VmSpec {
  const { id } = vm;
  const guestNet =
    nics.length > 0
      ? nics
          .map(({ nic, network }) => (network.dhcp ? 'dhcp' : `${nic.ip}/${network.subnet.split('/')[1]}${network.gateway ? `,${network.gateway}` : ''}`))
          .join(';')
      : 'dhcp';
  const boot: VmSpec['boot'] =
    'kernelPath' in files
      ? {
          kind: 'kernel',
          kernelPath: files.kernelPath,
          initrdPath: files.initrdPath,
          // The kernel writes to the screen (tty0) and the serial port; the last console named
          // is /dev/console, so the readiness line and the shell stay on the serial port.
          cmdline: `console=tty0 console=ttyS0 nubis.name=${request.name} nubis.net=${guestNet} panic=-1`,
        }
      : { kind: 'disk', path: files.path, format: plan.image.format as 'qcow2' | 'raw' };
  const tapNics = nics.map(({ nic, network, firewall }) => ({
    id: `net${nic.device_index}`,
    mac: nic.mac,
    mode: 'tap' as const,
    network: { id: network.id, vni: network.vni, mtu: network.mtu },
    firewall: {
      ip: firewall!.ip,
      ingressRules: firewall!.ingressRules,
      allowIngressFrom: firewall!.allowIngressFrom,
      ...(firewall!.egressRules ? { egressRules: firewall!.egressRules } : {}),
    },
  }));
  return {
    id,
    name: request.name,
    ...vcpuSpecOf(request),
    ...memorySpecOf(request),
    boot,
    disks: plan.disks.map((d) => d.disk),
    nics: tapNics.length > 0 ? tapNics : [{ id: 'net0', mac: newMac(), mode: 'user', forwards: plan.forwards }],
    cpuControls: cpuControlsAfter(undefined, request, { name: request.name, cpus: maxCpusOfRequest(request) }),
    ...platformSpecOf(request, plan.trustedLaunch),
    unixUid: vm.unixUid,
  };
}
