/**
 * Trusted launch on the control plane: the expected launch digests (SHA-256), the projects that
 * require them, and a VM's attestation. An image's expected values (kernel, initrd, disk base
 * image) are recorded when it is imported or built (`recordImageReferences`), else by the first
 * launch measured from it (host/launch-measurement.ts); the first
 * launch on any host records the hosts' software (QEMU's binary, the UEFI firmware); a VM's first
 * launch records its own canonical command line. Later launches are compared with them: a project
 * that requires trusted launch hands its VMs' hosts the expected values, and a host starts such a
 * VM paused and lets it run only when they match.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { basename } from 'node:path';
import type { LaunchMeasurement } from '../agent-api/contract.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import type { Db } from '../state/database.ts';

/** Where a component's expected value lives: per image, for all hosts, or per VM. */
export function referenceScope(component: string, vm: { id: string; imageId: string }): string {
  if (component === 'qemu-binary' || component === 'firmware') return 'host-software';
  if (component === 'command-line') return `vm:${vm.id}`;
  return `image:${vm.imageId}`;
}

/** SHA-256 of a file, read as a stream. */
async function fileSha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/**
 * Records the expected values of image `imageId` from its files, as a launch from it measures
 * them (the kernel, the initrd, or the disk image under a VM's overlay). `replace` is for an
 * image the platform builds itself (`tiny`): a rebuild's files are the ones to expect.
 */
export async function recordImageReferences(
  db: Db,
  imageId: string,
  files: { kernelPath: string; initrdPath: string } | { path: string },
  options: { replace?: boolean } = {},
): Promise<void> {
  const named: Array<[component: string, path: string]> =
    'path' in files
      ? [[`disk-base:${basename(files.path)}`, files.path]]
      : [
          ['kernel', files.kernelPath],
          ['initrd', files.initrdPath],
        ];
  const recordedAt = new Date().toISOString();
  for (const [component, path] of named) {
    const row = { scope: `image:${imageId}`, component, sha256: await fileSha256(path), path, recorded_at: recordedAt, recorded_from_vm: '' };
    await db
      .insertInto('launch_references')
      .values(row)
      .onConflict((conflict) =>
        options.replace
          ? conflict.columns(['scope', 'component']).doUpdateSet({ sha256: row.sha256, path: row.path, recorded_at: row.recorded_at })
          : conflict.columns(['scope', 'component']).doNothing(),
      )
      .execute();
  }
}

/**
 * Records the components of `launch` that have no expected value yet (a first launch), in the
 * transaction that records the status carrying it. Values already recorded are never replaced.
 */
export async function recordLaunchReferences(db: Db, vmId: string, launch: LaunchMeasurement): Promise<void> {
  const vm = await db.selectFrom('vms').select(['id', 'image_id']).where('id', '=', vmId).executeTakeFirst();
  if (!vm) return;
  const rows = launch.components.map((c) => ({
    scope: referenceScope(c.component, { id: vm.id, imageId: vm.image_id }),
    component: c.component,
    sha256: c.sha256,
    path: c.path.slice(0, 4096),
    recorded_at: launch.measuredAt,
    recorded_from_vm: vm.id,
  }));
  if (rows.length > 0)
    await db
      .insertInto('launch_references')
      .values(rows)
      .onConflict((conflict) => conflict.columns(['scope', 'component']).doNothing())
      .execute();
}

/**
 * The trusted launch of a new VM of `projectId` from `imageId` booting `firmware`: undefined when
 * its project does not require one, else the expected values known so far (of the image and the
 * hosts' software).
 */
export async function trustedLaunchFor(db: Db, projectId: string, imageId: string, firmware: 'bios' | 'uefi' = 'bios'): Promise<VmSpec['trustedLaunch']> {
  const project = await db.selectFrom('projects').select('require_trusted_launch').where('id', '=', projectId).executeTakeFirst();
  if (!project?.require_trusted_launch) return undefined;
  const rows = await db
    .selectFrom('launch_references')
    .select(['component', 'sha256'])
    .where('scope', 'in', [`image:${imageId}`, 'host-software'])
    .orderBy('component')
    .execute();
  // Only a UEFI VM's QEMU holds a firmware file open (SeaBIOS is built in and read once); PCR
  // values are checked through a quote once the guest runs (`attestPcrs`), not at launch.
  const wanted = rows.filter((row) => (row.component !== 'firmware' || firmware === 'uefi') && !row.component.startsWith('pcr:'));
  return { expected: wanted.map((row) => ({ component: row.component, sha256: row.sha256 })) };
}

/** One measured component of an attestation, beside its expected value. */
export interface AttestedComponent {
  component: string;
  path: string;
  measured: string;
  expected?: string;
  /** Where the expected value was recorded: `image:<id>`, `host-software` or `vm:<id>`. */
  scope: string;
  /** True when it matches, false when it differs, undefined when nothing is expected yet. */
  matches?: boolean;
}

/** A VM's attestation: its last launch's measurements, each with its expected value. */
export interface Attestation {
  vm: string;
  measuredAt?: string;
  requireTrustedLaunch: boolean;
  /** `match`: every measured component has its expected value; `mismatch`: one differs; `unmeasured`: no launch measured. */
  verdict: 'match' | 'mismatch' | 'unmeasured';
  components: AttestedComponent[];
}

/** The attestation of the VM of record `row`, from the launch its host last reported. */
export async function attestationOf(db: Db, row: { id: string; name: string; image_id: string; project_id: string; status: string }): Promise<Attestation> {
  const project = await db.selectFrom('projects').select('require_trusted_launch').where('id', '=', row.project_id).executeTakeFirst();
  const launch = (JSON.parse(row.status || '{}') as { launch?: LaunchMeasurement }).launch;
  const base = { vm: row.name, requireTrustedLaunch: Boolean(project?.require_trusted_launch) };
  if (!launch) return { ...base, verdict: 'unmeasured', components: [] };
  const scopes = ['host-software', `image:${row.image_id}`, `vm:${row.id}`];
  const references = await db.selectFrom('launch_references').selectAll().where('scope', 'in', scopes).execute();
  const components = launch.components.map((c): AttestedComponent => {
    const scope = referenceScope(c.component, { id: row.id, imageId: row.image_id });
    const expected = references.find((r) => r.scope === scope && r.component === c.component)?.sha256;
    return { component: c.component, path: c.path, measured: c.sha256, scope, ...(expected ? { expected, matches: expected === c.sha256 } : {}) };
  });
  return { ...base, measuredAt: launch.measuredAt, verdict: components.some((c) => c.matches === false) ? 'mismatch' : 'match', components };
}

/** Makes `projectId` require trusted launch of its VMs from their next start (or stop requiring it). */
export async function setRequireTrustedLaunch(db: Db, projectId: string, required: boolean): Promise<void> {
  await db
    .updateTable('projects')
    .set({ require_trusted_launch: required ? 1 : 0 })
    .where('id', '=', projectId)
    .execute();
}

/** The spec's TPM, firmware and trusted launch from a create request (nothing for a VM that asks for none). */
export function platformSpecOf(request: { tpm?: boolean; firmware?: 'bios' | 'uefi' }, trustedLaunch: VmSpec['trustedLaunch']): Partial<VmSpec> {
  return {
    ...(request.tpm ? { tpm: true } : {}),
    ...(request.firmware === 'uefi' ? { firmware: 'uefi' as const } : {}),
    ...(trustedLaunch ? { trustedLaunch } : {}),
  };
}

/**
 * Checks a verified quote's PCR values (pcr-quote.ts) against the expected ones and records the
 * missing ones, as launches do: PCR 0 (the firmware's own code) per firmware for all hosts, PCRs
 * 1-7 (its configuration and what it booted) per VM. Answers in the attestation's shape.
 */
export async function attestPcrs(db: Db, row: { id: string; name: string; spec: string }, pcrs: string[]): Promise<AttestedComponent[]> {
  const firmware = (JSON.parse(row.spec) as Partial<VmSpec>).firmware ?? 'bios';
  const measured = pcrs.map((sha256, index) => ({
    scope: index === 0 ? 'host-software' : `vm:${row.id}`,
    component: index === 0 ? `pcr:0:${firmware}` : `pcr:${index}`,
    sha256,
  }));
  const recordedAt = new Date().toISOString();
  await db
    .insertInto('launch_references')
    .values(measured.map((m) => ({ ...m, path: `PCR ${m.component.split(':')[1]} (sha256)`, recorded_at: recordedAt, recorded_from_vm: row.id })))
    .onConflict((conflict) => conflict.columns(['scope', 'component']).doNothing())
    .execute();
  const references = await db
    .selectFrom('launch_references')
    .selectAll()
    .where('scope', 'in', ['host-software', `vm:${row.id}`])
    .execute();
  return measured.map((m) => {
    const expected = references.find((r) => r.scope === m.scope && r.component === m.component);
    // A value recorded by this very quote is first seen, not a match.
    const firstSeen = expected?.recorded_at === recordedAt && expected.recorded_from_vm === row.id;
    return {
      component: m.component,
      path: `PCR ${m.component.split(':')[1]} (sha256)`,
      measured: m.sha256,
      scope: m.scope,
      ...(expected && !firstSeen ? { expected: expected.sha256, matches: expected.sha256 === m.sha256 } : {}),
    };
  });
}
