/**
 * Waits until a fake cluster has nothing in progress: no operation running and no desktop being
 * provisioned or reset, twice in a row. Twice, because background steps (the desktop broker
 * keeping spares) start their operations a moment after what triggered them, and writes commit in
 * groups a turn later (src/state/write-queue.ts): one quiet look can fall in between.
 */
import type { FakeCluster } from './fake-cluster.ts';

export async function settle(cluster: FakeCluster, timeoutMs = 10_000): Promise<void> {
  const busy = async () =>
    (await cluster.services.operations.list({ status: 'running' })).length > 0 ||
    (await cluster.db.selectFrom('desktops').select('id').where('state', 'in', ['provisioning', 'resetting']).executeTakeFirst()) !== undefined;
  let quiet = 0;
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; ) {
    quiet = (await busy()) ? 0 : quiet + 1;
    if (quiet === 2) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`still in progress after ${timeoutMs} ms: operations running or desktops being provisioned or reset`);
}
