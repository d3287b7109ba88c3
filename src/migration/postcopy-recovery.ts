/**
 * Post-copy recovery: a post-copy whose stream broke (the link went down or stalled) pauses at
 * both ends and goes on once the link returns, because the VM already runs on the destination
 * while some of its memory is still on the source (README "Post-copy risk").
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { VmStatus } from '../agent-api/contract.ts';
import type { HostRegistry } from '../control/hosts.ts';
import type { OperationContext } from '../control/operations.ts';
import { NubisError, messageOf } from '../core/errors.ts';
import type { HostsTable } from '../state/schema.ts';
import type { MigrationFigures } from './migration-types.ts';
import { nextListenUri } from './stream-ports.ts';

/** How long a paused post-copy waits for its link to return. */
const POSTCOPY_RECOVERY_MS = 600_000;

/**
 * Post-copy lost its stream (a broken or stalled link): the VM already runs on the destination
 * and some of its pages are still on the source, so neither end may go on alone. Both ends are
 * paused (vCPUs touching a missing page wait; nothing crashes), then, until the link returns,
 * the destination listens again (`migrate-recover`) and the source reconnects (`migrate`
 * with `resume`), and post-copy goes on where it stopped.
 */
export async function recoverPostcopy(
  hosts: HostRegistry,
  op: OperationContext,
  m: { vmId: string; source: HostsTable; destination: HostsTable; figures: MigrationFigures },
): Promise<void> {
  const statusOf = (host: HostsTable) =>
    hosts
      .agent(host)
      .migrationStatus(m.vmId, { timeoutMs: 10_000 })
      .then(
        (s) => s.status,
        () => undefined,
      );
  const giveUpAt = Date.now() + POSTCOPY_RECOVERY_MS;
  m.figures.recoveries = (m.figures.recoveries ?? 0) + 1;
  await op.report(
    'postcopy-paused',
    `The post-copy stream to ${m.destination.name} broke: the VM waits there for its missing pages; recovering as soon as the link is back`,
    0.9,
  );
  for (let attempt = 1; ; attempt++) {
    if (Date.now() > giveUpAt) {
      throw new NubisError(
        'MIGRATION_POSTCOPY_PAUSED',
        `Post-copy could not be recovered within ${POSTCOPY_RECOVERY_MS / 1000} s; the VM stays paused on ${m.destination.name} with pages on ${m.source.name} (keep both hosts up)`,
      );
    }
    const sourceState = await statusOf(m.source);
    if (sourceState === 'completed') return;
    // The agent's record, not QEMU: the destination's main loop may be stuck on a missing page.
    const destinationVm = await hosts
      .agent(m.destination)
      .vmStatus(m.vmId, { timeoutMs: 10_000 })
      .catch((error: { code?: string }) => (error.code === 'VM_NOT_FOUND' ? ({ state: 'stopped' } as VmStatus) : undefined));
    if (destinationVm && (destinationVm.state === 'crashed' || destinationVm.state === 'stopped')) {
      throw new NubisError(
        'MIGRATION_FAILED',
        `The destination QEMU on ${m.destination.name} ended during post-copy; the VM's last state is paused on ${m.source.name} (see the destination's qemu.log)`,
      );
    }
    // Both ends must wait in postcopy-paused: a stalled (not broken) stream is closed by hand.
    // Out-of-band, and harmless on an end that already paused.
    for (const host of [m.source, m.destination])
      await hosts
        .agent(host)
        .pauseMigration(m.vmId, { timeoutMs: 15_000 })
        .catch(() => undefined);
    const uri = nextListenUri(m.destination);
    try {
      await hosts.agent(m.destination).recoverIncoming(m.vmId, uri, { timeoutMs: 15_000 });
      await hosts.agent(m.source).resumeMigration(m.vmId, uri);
      // The source connects (the kernel retries its SYN while the link is down); wait for
      // it to go on or to fall back to paused.
      for (let waited = 0; waited < 60_000; waited += 500) {
        const state = await statusOf(m.source);
        if (state === 'postcopy-active' || state === 'completed') {
          await op.report('postcopy', `Post-copy recovered (attempt ${attempt}); the rest of the pages follow`, 0.92);
          return;
        }
        if (state === 'postcopy-paused') break;
        await delay(500);
      }
    } catch (error) {
      // Under TCG a vCPU delivers interrupts holding QEMU's global lock; one that waits there
      // for a page that cannot come blocks the destination's main loop, which must accept the
      // recovered stream (seen with gdb: do_interrupt_all -> handle_userfault). KVM's vCPUs
      // wait for pages outside that lock.
      const tcgHint =
        m.destination.accelerator === 'tcg' && attempt >= 3
          ? ' (under TCG, a vCPU waiting for a missing page inside interrupt delivery blocks the destination QEMU for good; KVM hosts do not have this limit)'
          : '';
      await op.report('postcopy-paused', `Recovery attempt ${attempt} failed: ${messageOf(error)}; trying again${tcgHint}`, 0.9);
    }
    await delay(2_000);
  }
}
