/**
 * Placement: the least-loaded host with room. A VM that fits nowhere is refused with the reason
 * for every host, so the user sees what to change.
 */
import { NubisError } from '../core/errors.ts';
import type { HostView } from './hosts.ts';

/** Memory kept free on every host for the host itself and QEMU's own overhead. */
export const HOST_RESERVED_MEMORY_MB = 512;
/** vCPUs may be overcommitted this many times over the host's cores. */
export const CPU_OVERCOMMIT_RATIO = 4;

export interface PlacementRequest {
  cpus: number;
  memoryMb: number;
  /** Pin to this host by name. */
  host?: string;
}

/** Why `host` cannot take the VM, or undefined when it can. */
function refusal(host: HostView, request: PlacementRequest): string | undefined {
  if (host.status !== 'online') return `${host.name} is ${host.status}`;
  const freeMemoryMb = host.memoryMb - HOST_RESERVED_MEMORY_MB - host.allocatedMemoryMb;
  if (request.memoryMb > freeMemoryMb) return `${host.name} has ${Math.max(0, freeMemoryMb)} MiB free for VMs, the VM needs ${request.memoryMb} MiB`;
  const freeCpus = host.cpus * CPU_OVERCOMMIT_RATIO - host.allocatedCpus;
  if (request.cpus > freeCpus)
    return `${host.name} has ${Math.max(0, freeCpus)} vCPUs left (${CPU_OVERCOMMIT_RATIO}x its ${host.cpus} cores), the VM needs ${request.cpus}`;
  return undefined;
}

/** The host for a new VM. Throws `NO_HOST_FITS` (or `HOST_NOT_FOUND` for an unknown pin). */
export function placeVm(hosts: HostView[], request: PlacementRequest): HostView {
  const candidates = request.host ? hosts.filter((host) => host.name === request.host) : hosts;
  if (request.host && candidates.length === 0) throw new NubisError('HOST_NOT_FOUND', `No host ${request.host}; see nubis host list`);
  if (hosts.length === 0) throw new NubisError('NO_HOST_FITS', 'No host has joined yet; start one with nubis up');
  const reasons: string[] = [];
  let best: HostView | undefined;
  let bestLoad = Infinity;
  for (const host of candidates) {
    const why = refusal(host, request);
    if (why) {
      reasons.push(why);
      continue;
    }
    const load = (host.allocatedMemoryMb + request.memoryMb) / host.memoryMb;
    if (load < bestLoad) {
      best = host;
      bestLoad = load;
    }
  }
  if (!best)
    throw new NubisError('NO_HOST_FITS', `No host can take a VM with ${request.cpus} vCPUs and ${request.memoryMb} MiB: ${reasons.join('; ')}`, {
      details: { reasons },
    });
  return best;
}
