/**
 * A VM's memory between the API's fields and its spec. The API says `memoryMb` (current) and
 * `maxMemoryMb` (maximum, by default the current); the spec keeps the maximum as `memoryMb`
 * (QEMU's -m) and the current as `memoryTargetMb` (the balloon's target), and the vms table's
 * `memory_mb` is the maximum, so placement, the hosts' allocations and the project quota count
 * the maximum, never the balloon's size of the moment.
 */
import { checkedMemoryTarget, type MemorySettings, memoryTargetOf, type VmMemoryReport } from '../compute/memory-spec.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import type { Db } from '../state/database.ts';
import type { VmsTable } from '../state/schema.ts';
import type { HostRegistry } from './hosts.ts';
import type { Vm } from '../wire/schemas.ts';
import type { VmOwner } from './vm-owner.ts';

/** The memory fields of a create request. */
export interface MemoryRequest {
  name: string;
  memoryMb: number;
  maxMemoryMb?: number;
  memoryReclaim?: boolean;
}

/** What `vm set` changes of a VM's memory. */
export interface MemoryChange {
  memoryMb?: number;
  memoryReclaim?: boolean;
}

/** The maximum a create asks for: what placement and the quota count. */
export function maxMemoryOf(request: Pick<MemoryRequest, 'memoryMb' | 'maxMemoryMb'>): number {
  return request.maxMemoryMb ?? request.memoryMb;
}

/** The spec's memory fields of a create, refused (before anything is placed) when the current memory is outside the floor and the maximum. */
export function memorySpecOf(request: MemoryRequest): Pick<VmSpec, 'memoryMb' | 'memoryTargetMb' | 'memoryReclaim'> {
  const maxMb = maxMemoryOf(request);
  const targetMb = checkedMemoryTarget(request.name, request.memoryMb, maxMb);
  return { memoryMb: maxMb, ...(targetMb < maxMb ? { memoryTargetMb: targetMb } : {}), ...(request.memoryReclaim ? { memoryReclaim: true } : {}) };
}

/** Whether an update names the VM's memory. */
export function changesMemory(change: MemoryChange): boolean {
  return change.memoryMb !== undefined || change.memoryReclaim !== undefined;
}

/** The memory settings after `change` over `spec`, checked against its maximum. */
export function memorySettingsAfter(spec: VmSpec, change: MemoryChange): MemorySettings {
  const targetMb = checkedMemoryTarget(spec.name, change.memoryMb ?? memoryTargetOf(spec), spec.memoryMb);
  const reclaim = change.memoryReclaim ?? spec.memoryReclaim === true;
  return { ...(targetMb < spec.memoryMb ? { targetMb } : {}), ...(reclaim ? { reclaim } : {}) };
}

/** The spec after the settings an agent took. */
export function specWithMemory(spec: VmSpec, settings: MemorySettings): VmSpec {
  const { memoryTargetMb: _target, memoryReclaim: _reclaim, ...rest } = spec;
  return { ...rest, ...(settings.targetMb !== undefined ? { memoryTargetMb: settings.targetMb } : {}), ...(settings.reclaim ? { memoryReclaim: true } : {}) };
}

/** The API's view of a spec's memory. */
export function memoryFields(spec: Pick<VmSpec, 'memoryMb' | 'memoryTargetMb' | 'memoryReclaim'>): {
  memoryMb: number;
  maxMemoryMb: number;
  memoryReclaim: boolean;
} {
  return { memoryMb: memoryTargetOf(spec), maxMemoryMb: spec.memoryMb, memoryReclaim: spec.memoryReclaim === true };
}

/**
 * Changes the VM's memory: its host applies it at once (through the balloon when it runs, and
 * for every later start), then the control plane's spec follows. Claimed from the VM's one owner
 * as `tune`, so no start, stop or migration runs meanwhile; a refusal changes nothing.
 */
export async function setVmMemory(deps: { db: Db; hosts: HostRegistry; owner: VmOwner }, row: VmsTable, change: MemoryChange): Promise<void> {
  await deps.owner.claim(row.id, 'tune', row.name).run(async () => {
    const current = await deps.db.selectFrom('vms').select(['spec', 'host_id']).where('id', '=', row.id).executeTakeFirstOrThrow();
    const spec = JSON.parse(current.spec) as VmSpec;
    const settings = memorySettingsAfter(spec, change);
    await deps.hosts.agent(await deps.hosts.row(current.host_id)).setMemory(row.id, settings);
    await deps.db
      .updateTable('vms')
      .set({ spec: JSON.stringify(specWithMemory(spec, settings)) })
      .where('id', '=', row.id)
      .execute();
  });
}

/** The VM's memory as its host reports it now; undefined (never an error: it is extra detail) when the host cannot say. */
export async function readVmMemoryUsage(hosts: HostRegistry, vm: Pick<Vm, 'id' | 'host'>): Promise<VmMemoryReport | undefined> {
  try {
    return await hosts.agent(await hosts.row(vm.host)).memoryReport(vm.id);
  } catch {
    return undefined;
  }
}
