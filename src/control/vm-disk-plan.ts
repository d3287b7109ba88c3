/**
 * The disks a new VM asks for (POOL/VOLUME references): each a volume of the VM's project that
 * no VM uses, and the host the VM must run on when one of them is a dir-pool file on a host.
 */
import type { DiskSpec } from '../compute/vm-spec.ts';
import { NubisError } from '../core/errors.ts';
import type { HostRegistry } from './hosts.ts';
import type { StorageCatalogue } from './storage.ts';
import type { ProjectRef } from './volume-owners.ts';

export interface DiskPlan {
  volumes: Array<{ pool: string; volume: string }>;
  disks: Array<{ disk: DiskSpec; hostId?: string }>;
  /** Where the VM must run (host name or id) and why: the host of its dir-pool volumes, else the host asked for. */
  pinnedHost: { ref: string; why: string } | undefined;
}

/** Checks the disk references of a create and resolves them to disk specs (nothing is recorded). */
export async function planDisks(
  request: { disks?: string[]; host?: string },
  project: ProjectRef,
  deps: { storage: StorageCatalogue; hosts: HostRegistry },
): Promise<DiskPlan> {
  const volumes = (request.disks ?? []).map((ref) => {
    const [pool, volume, ...rest] = ref.split('/');
    if (!pool || !volume || rest.length > 0) throw new NubisError('VALIDATION_FAILED', `Disk ${ref} is not POOL/VOLUME; see nubis volume list`);
    return { pool, volume };
  });
  if (new Set(volumes.map((v) => `${v.pool}/${v.volume}`)).size !== volumes.length) throw new NubisError('VALIDATION_FAILED', 'The same volume is given twice');
  for (const { pool, volume } of volumes) {
    await deps.storage.owners.requireIn(pool, volume, project);
    await deps.storage.checkDiskFree(pool, volume);
  }
  const disks = await Promise.all(volumes.map(({ pool, volume }, index) => deps.storage.diskFor(pool, volume, `disk${index}`)));
  return { volumes, disks, pinnedHost: await pinnedHost(request, disks, deps.hosts) };
}

/** A volume of a host's dir pool is a file on that host: the VM runs there (else where asked). */
async function pinnedHost(request: { host?: string }, disks: Array<{ hostId?: string }>, hosts: HostRegistry): Promise<DiskPlan['pinnedHost']> {
  const diskHosts = [...new Set(disks.flatMap((d) => (d.hostId ? [d.hostId] : [])))];
  if (diskHosts.length > 1) throw new NubisError('VALIDATION_FAILED', 'The dir-pool volumes given live on different hosts; a VM runs on one host');
  if (diskHosts.length === 0) return request.host ? { ref: request.host, why: `--host ${request.host} was asked for` } : undefined;
  const diskHost = await hosts.row(diskHosts[0]);
  if (request.host && (await hosts.row(request.host)).id !== diskHost.id) {
    throw new NubisError('VALIDATION_FAILED', `Its dir-pool volume lives on ${diskHost.name}, so the VM must run there, not on ${request.host}`);
  }
  return { ref: diskHost.name, why: 'its dir-pool volume lives there' };
}
