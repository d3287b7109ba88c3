/**
 * A VM's vCPUs between the API's fields and its spec. The API says `cpus` (present now),
 * `maxCpus` (at most, by default `cpus`) and `cpuTopology` (by default one socket of `maxCpus`
 * cores); the spec keeps all three, and the vms table's `cpus` is the maximum, so placement, the
 * hosts' allocations and the project's vCPU quota count what the VM can grow to, as memory
 * counts its maximum (vm-memory.ts).
 */
import { type CpuTopology, checkedVcpuLayout, maxCpusOf, type VcpuLayout, vcpuLayoutOf, vcpusAfter } from '../compute/cpu-topology.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import { publishChange } from '../events/change-feed.ts';
import type { Db } from '../state/database.ts';
import type { VmsTable } from '../state/schema.ts';
import type { HostRegistry } from './hosts.ts';
import type { VmOwner } from './vm-owner.ts';

/** The vCPU fields of a create request. */
export interface VcpuRequest {
  name: string;
  cpus: number;
  maxCpus?: number;
  cpuTopology?: CpuTopology;
}

/** The maximum a create asks for: what placement and the quota count. */
export function maxCpusOfRequest(request: Pick<VcpuRequest, 'cpus' | 'maxCpus'>): number {
  return maxCpusOf(request);
}

/** The spec's vCPU fields of a create, refused (before anything is placed) when they make no layout. */
export function vcpuSpecOf(request: VcpuRequest): VcpuLayout {
  return checkedVcpuLayout(request.name, request);
}

/** The API's view of a spec's vCPUs (a spec from before layouts gets its implicit one). */
export function vcpuFieldsOf(spec: Pick<VmSpec, 'cpus' | 'maxCpus' | 'cpuTopology'>): VcpuLayout {
  return vcpuLayoutOf(spec);
}

/**
 * Sets the vCPUs present: checked against the VM's maximum here, then its host applies it
 * (hot-added while it runs; fewer refused while it runs, host/vm-vcpus.ts says why; stopped: from
 * its next start), then the control plane's spec follows. Claimed from the VM's one owner as
 * `tune`, so no start, stop or migration runs meanwhile; a refusal changes nothing.
 */
export async function setVmCpus(deps: { db: Db; hosts: HostRegistry; owner: VmOwner }, row: VmsTable, cpus: number): Promise<void> {
  await deps.owner.claim(row.id, 'tune', row.name).run(async () => {
    const current = await deps.db.selectFrom('vms').select(['spec', 'host_id']).where('id', '=', row.id).executeTakeFirstOrThrow();
    const spec = JSON.parse(current.spec) as VmSpec;
    const layout = vcpusAfter(row.name, spec, cpus);
    await deps.hosts.agent(await deps.hosts.row(current.host_id)).setCpus(row.id, { cpus: layout.cpus });
    await deps.db
      .updateTable('vms')
      .set({ spec: JSON.stringify({ ...spec, ...layout }) })
      .where('id', '=', row.id)
      .execute();
    publishChange(deps.db, 'vm', 'updated', row.id);
  });
}
