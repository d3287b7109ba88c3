/**
 * A VM's NIC bandwidth limits between the API and its spec: `nicBandwidth: {"net0": {"inMbit":
 * 100, "outMbit": 50}}` names a NIC as `vm show` lists it (net0 is the VM's first NIC); the spec
 * keeps the limits on the NIC, where its host applies them to the tap at every start, on a
 * migration's target and live (network/nic-bandwidth.ts). Only NICs on virtual networks have a
 * tap to limit.
 */
import type { NicBandwidthSpec, VmSpec } from '../compute/vm-spec.ts';
import { NubisError } from '../core/errors.ts';
import { checkNicBandwidth } from '../network/nic-bandwidth.ts';

/** The API's form: limits by NIC; null (on update) lifts a NIC's limits. */
export type NicBandwidthFields = Record<string, NicBandwidthSpec | null>;

/** The NICs whose limits `change` sets, each checked; empty limits lift them. */
export function nicBandwidthChanges(
  spec: Pick<VmSpec, 'nics'>,
  change: NicBandwidthFields,
  vmName: string,
): Array<{ nicId: string; bandwidth: NicBandwidthSpec }> {
  return Object.entries(change).map(([nicId, bandwidth]) => {
    const nic = spec.nics.find((candidate) => candidate.id === nicId);
    if (!nic) throw new NubisError('NET_NIC_NOT_FOUND', `VM ${vmName} has no NIC ${nicId.slice(0, 32)}; vm show lists its NICs (net0, net1, ...)`);
    if (nic.mode !== 'tap')
      throw new NubisError('VALIDATION_FAILED', `NIC ${nicId} of VM ${vmName} is on the user-mode network; bandwidth limits apply to NICs on virtual networks`);
    if (bandwidth) checkNicBandwidth(bandwidth, nicId);
    return { nicId, bandwidth: bandwidth ?? {} };
  });
}

/** The spec after one NIC's change (from nicBandwidthChanges). */
export function withNicBandwidth(spec: VmSpec, change: { nicId: string; bandwidth: NicBandwidthSpec }): VmSpec {
  const limited = Object.keys(change.bandwidth).length > 0;
  return {
    ...spec,
    nics: spec.nics.map((nic) => {
      if (nic.id !== change.nicId) return nic;
      const { bandwidth: _old, ...rest } = nic;
      return limited ? { ...rest, bandwidth: change.bandwidth } : rest;
    }),
  };
}

/** The API's view: the limited NICs with their limits. */
export function nicBandwidthFields(spec: Pick<VmSpec, 'nics'>): { nicBandwidth?: Record<string, NicBandwidthSpec> } {
  const limited = spec.nics.flatMap((nic) => (nic.bandwidth && Object.keys(nic.bandwidth).length > 0 ? [[nic.id, nic.bandwidth] as const] : []));
  return limited.length > 0 ? { nicBandwidth: Object.fromEntries(limited) } : {};
}
