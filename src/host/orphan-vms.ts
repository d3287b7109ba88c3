/**
 * Finds QEMU processes left under a data folder with no agent to own them (the agent was killed)
 * and stops them: `nubis down` must leave no QEMU behind.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { QemuProcess } from '../compute/qemu/qemu-process.ts';

/** Stops every QEMU still running under `hostsDir`; returns the VM folders it stopped. */
export async function stopOrphanedVms(hostsDir: string, options: { gracefulTimeoutMs?: number } = {}): Promise<string[]> {
  if (!existsSync(hostsDir)) return [];
  const stopped: string[] = [];
  for (const host of readdirSync(hostsDir)) {
    const vmsDir = join(hostsDir, host, 'vms');
    if (!existsSync(vmsDir)) continue;
    for (const vm of readdirSync(vmsDir)) {
      const qemu = await QemuProcess.attach(join(vmsDir, vm)).catch(() => undefined);
      if (!qemu) continue;
      await qemu.stop({ gracefulTimeoutMs: options.gracefulTimeoutMs ?? 10_000 });
      stopped.push(join(vmsDir, vm));
    }
  }
  return stopped;
}
