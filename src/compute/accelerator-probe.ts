/**
 * Chooses the accelerator of a host by booting a guest under KVM with a deadline, never by the
 * mere presence of /dev/kvm: on these machines /dev/kvm is a paravirtual KVM (kvm_pvm) under
 * which a stock guest kernel hangs without a line of output (shared/HOST-FACTS.md).
 */
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { messageOf } from '../core/errors.ts';
import { QemuProcess, runtimePathsOf } from './qemu/qemu-process.ts';
import { qemuVersionLine } from './qemu/qemu-version.ts';
import { READINESS_PATTERN, waitForSerialLine } from './serial-log.ts';
import type { Accelerator } from './vm-spec.ts';

export interface AcceleratorChoice {
  accelerator: Accelerator;
  /** Why: shown to users per host. */
  reason: string;
  probedAt: string;
  /** What the result depends on; a change of any of these probes again. */
  key: string;
}

export interface ProbeGuest {
  kernelPath: string;
  initrdPath: string;
  /** Identifies the guest, e.g. the image checksum, for the cache key. */
  identity: string;
}

/**
 * The accelerator for this host, probed once and cached in `cacheFile` for as long as the kernel,
 * QEMU and the probe guest stay the same. `NUBIS_ACCELERATOR=tcg|kvm` overrides the probe.
 */
export async function chooseAccelerator(
  guest: ProbeGuest,
  options: { cacheFile: string; workDir: string; timeoutMs?: number; qemuVersion?: string },
): Promise<AcceleratorChoice> {
  const forced = process.env.NUBIS_ACCELERATOR;
  const key = [readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(), options.qemuVersion ?? qemuVersionLine(), guest.identity].join(' | ');
  if (forced === 'tcg' || forced === 'kvm') {
    return { accelerator: forced, reason: `Set by NUBIS_ACCELERATOR=${forced}`, probedAt: new Date().toISOString(), key };
  }
  if (existsSync(options.cacheFile)) {
    const cached = JSON.parse(await readFile(options.cacheFile, 'utf8')) as AcceleratorChoice;
    if (cached.key === key) return cached;
  }
  const choice = await probe(guest, key, options.workDir, options.timeoutMs ?? 20_000);
  await writeFile(options.cacheFile, `${JSON.stringify(choice, null, 2)}\n`);
  return choice;
}

async function probe(guest: ProbeGuest, key: string, workDir: string, timeoutMs: number): Promise<AcceleratorChoice> {
  const probedAt = new Date().toISOString();
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return { accelerator: 'tcg', reason: 'No usable /dev/kvm on this host: using TCG emulation', probedAt, key };
  }
  const vmDir = join(workDir, `accel-probe-${process.pid}`);
  await mkdir(vmDir, { recursive: true });
  const started = Date.now();
  let qemu: QemuProcess | undefined;
  try {
    qemu = await QemuProcess.launch(
      {
        id: 'accel-probe',
        name: 'accel-probe',
        cpus: 1,
        memoryMb: 128,
        boot: { kind: 'kernel', kernelPath: guest.kernelPath, initrdPath: guest.initrdPath, cmdline: 'console=ttyS0 nubis.name=accel-probe panic=-1' },
        disks: [],
        nics: [],
      },
      vmDir,
      { accelerator: 'kvm', timeoutMs: 10_000 },
    );
    await waitForSerialLine(runtimePathsOf(vmDir).serialLog, READINESS_PATTERN, { fromOffset: 0, timeoutMs });
    return { accelerator: 'kvm', reason: `A guest booted under KVM in ${Date.now() - started} ms`, probedAt, key };
  } catch (error) {
    return {
      accelerator: 'tcg',
      reason: `/dev/kvm exists but a guest under KVM did not become ready within ${timeoutMs} ms (${messageOf(error)}); nested or paravirtual KVM such as kvm_pvm does this: using TCG emulation`,
      probedAt,
      key,
    };
  } finally {
    if (qemu) await qemu.stop({ force: true }).catch(() => undefined);
    await rm(vmDir, { recursive: true, force: true });
  }
}
