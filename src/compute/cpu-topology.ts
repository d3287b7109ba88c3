/**
 * A VM's vCPUs as present + maximum, laid out in sockets, cores and threads: the wire type of
 * the layout, its defaults and the one check of it, applied where the API receives a create or a
 * change, on the host, and where QEMU's `-smp` is built (compute/qemu/vcpus.ts). The maximum is
 * what the guest's firmware describes (its possible CPUs) and what placement and quotas count;
 * vCPUs up to it can be hot-added while the VM runs.
 */
import { type Static, Type } from '@sinclair/typebox';
import { NubisError } from '../core/errors.ts';

/** The most vCPUs a VM can have (present or at most). */
export const MAX_VCPUS = 64;

const Count = (description: string) => Type.Integer({ format: 'int32', minimum: 1, maximum: MAX_VCPUS, description });

/** How the maximum vCPUs are laid out: sockets x cores x threads must be the maximum. */
export const CpuTopology = Type.Object(
  {
    sockets: Count('CPU sockets'),
    cores: Count('Cores per socket'),
    threads: Count('Threads per core'),
  },
  { additionalProperties: false },
);
export type CpuTopology = Static<typeof CpuTopology>;

/** The vCPU fields of a spec: `cpus` present now; the maximum and layout, when left out, follow from it. */
export interface VcpuFields {
  cpus: number;
  maxCpus?: number;
  cpuTopology?: CpuTopology;
}

/** A checked layout: every field given. */
export interface VcpuLayout {
  cpus: number;
  maxCpus: number;
  cpuTopology: CpuTopology;
}

/**
 * The layout an experienced user expects when they name none: one socket of `maxCpus` cores, one
 * thread each (QEMU's own choice for `-smp N` on machine types from 6.2 on, so a VM created before
 * layouts existed keeps the same guest view).
 */
export function defaultCpuTopology(maxCpus: number): CpuTopology {
  return { sockets: 1, cores: maxCpus, threads: 1 };
}

/** The maximum of a spec (or request): its `maxCpus`, else its `cpus`. */
export function maxCpusOf(fields: Pick<VcpuFields, 'cpus' | 'maxCpus'>): number {
  return fields.maxCpus ?? fields.cpus;
}

/** The full layout of `fields`, defaults filled in (not checked). */
export function vcpuLayoutOf(fields: VcpuFields): VcpuLayout {
  const maxCpus = maxCpusOf(fields);
  return { cpus: fields.cpus, maxCpus, cpuTopology: fields.cpuTopology ?? defaultCpuTopology(maxCpus) };
}

function isCount(value: unknown): value is number {
  return Number.isInteger(value) && (value as number) >= 1 && (value as number) <= MAX_VCPUS;
}

/**
 * `fields` with defaults filled in when they make a layout QEMU takes; otherwise a
 * VM_CPUS_INVALID error naming what is wrong and what to ask for: each count 1-64, the present
 * vCPUs at most the maximum, sockets x cores x threads exactly the maximum.
 */
export function checkedVcpuLayout(vmName: string, fields: VcpuFields): VcpuLayout {
  const layout = vcpuLayoutOf(fields);
  const { cpus, maxCpus, cpuTopology: t } = layout;
  const refuse = (message: string): never => {
    throw new NubisError('VM_CPUS_INVALID', `VM ${vmName}: ${message}`);
  };
  if (!isCount(cpus)) refuse(`${cpus} vCPUs is not a whole number from 1 to ${MAX_VCPUS}`);
  if (!isCount(maxCpus)) refuse(`a maximum of ${maxCpus} vCPUs is not a whole number from 1 to ${MAX_VCPUS}`);
  for (const key of ['sockets', 'cores', 'threads'] as const) if (!isCount(t[key])) refuse(`${t[key]} ${key} is not a whole number from 1 to ${MAX_VCPUS}`);
  if (cpus > maxCpus) refuse(`${cpus} vCPUs is more than its maximum of ${maxCpus}; ask for at most ${maxCpus}, or for a larger --max-cpus`);
  const product = t.sockets * t.cores * t.threads;
  if (product !== maxCpus)
    refuse(
      `${t.sockets} sockets x ${t.cores} cores x ${t.threads} threads make ${product} vCPUs, not its maximum of ${maxCpus}; give a layout whose product is --max-cpus (or --max-cpus ${product})`,
    );
  return layout;
}

/** The API's view of a spec's vCPUs. */
export function vcpuFields(fields: VcpuFields): VcpuLayout {
  return vcpuLayoutOf(fields);
}

/** What the control plane sets on an agent: the vCPUs present (live by hot-adding while the VM runs). */
export const VcpuSettings = Type.Object({ cpus: Count('vCPUs present, up to its maximum') }, { additionalProperties: false });
export type VcpuSettings = Static<typeof VcpuSettings>;

/**
 * The layout after `cpus` over `current`, checked against its maximum, with the maximum and
 * layout written out: a spec that left them implicit (max = cpus) keeps its maximum when its
 * present count changes.
 */
export function vcpusAfter(vmName: string, current: VcpuFields, cpus: number): VcpuLayout {
  return checkedVcpuLayout(vmName, { ...vcpuLayoutOf(current), cpus });
}
