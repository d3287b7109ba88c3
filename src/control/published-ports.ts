/** Host ports published to guests (user-mode NICs): one VM each, whatever its project. */
import type { PortForward, VmSpec } from '../compute/vm-spec.ts';
import { NubisError } from '../core/errors.ts';
import type { Db } from '../state/database.ts';

/** Refuses `forwards` when another VM already publishes one of their host ports (`PORT_IN_USE`). */
export async function checkPortsFree(db: Db, forwards: PortForward[]): Promise<void> {
  if (forwards.length === 0) return;
  // Every VM's published ports are in its spec: read the specs only, not whole views.
  const specs = await db.selectFrom('vms').select('spec').execute();
  const published = specs.flatMap((row) => (JSON.parse(row.spec) as VmSpec).nics.flatMap((nic) => nic.forwards ?? []));
  const taken = new Set(published.map((p) => `${p.protocol}:${p.hostPort}`));
  for (const forward of forwards) {
    if (taken.has(`${forward.protocol}:${forward.hostPort}`)) {
      throw new NubisError('PORT_IN_USE', `Host port ${forward.hostPort}/${forward.protocol} is already published by another VM; choose another port`);
    }
  }
}
