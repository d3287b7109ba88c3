/**
 * Seeds bench/scale's cluster with VMs through the control plane's own service code while the
 * control plane is stopped: the same `VmService.create` an API create runs (checks, placement,
 * records, operation, the agent's createVm over its unix socket), over the control plane's data
 * folder (its database, join token and control key), against the simulated hosts, which keep the
 * VMs they are given, so their reports agree with the records afterwards.
 *
 * Not what the API does: no HTTP request, no token or audit entry per create; and the database is
 * opened here with `PRAGMA synchronous = OFF` (the control plane uses FULL), because seeding is
 * set-up, not a figure: it ends with a checkpoint, so everything is on disk before the control
 * plane opens the file again.
 *
 *   npx tsx bench/scale/seed.ts --data DIR --vms 95000 --project scale [--concurrency 32]
 *
 * Prints one JSON line at the end: {"created": n, "seconds": s, "cpuSeconds": c}.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { sql } from 'kysely';
import { createServices } from '../../src/app/control-plane.ts';
import { dataPaths } from '../../src/core/paths.ts';
import { openDatabase } from '../../src/state/database.ts';

const { values: args } = parseArgs({
  options: {
    data: { type: 'string' },
    vms: { type: 'string' },
    project: { type: 'string', default: 'scale' },
    prefix: { type: 'string', default: 's' },
    concurrency: { type: 'string', default: '32' },
  },
});
if (!args.data || !args.vms) throw new Error('Give --data and --vms');
const paths = dataPaths(args.data);
const count = Number(args.vms);
const concurrency = Number(args.concurrency);

const db = await openDatabase(paths.database);
await sql`PRAGMA synchronous = OFF`.execute(db);
const services = createServices({
  db,
  dataDir: args.data,
  joinToken: readFileSync(paths.joinToken, 'utf8').trim(),
  controlKey: readFileSync(paths.controlKey, 'utf8').trim(),
});
// The simulated hosts are alive (they answer every createVm) but send this process no
// heartbeats: it hears them itself, or placement would find every host offline after 30 s.
const hostIds = (await services.hosts.list()).map((host) => host.id);
const keepAlive = setInterval(() => {
  for (const id of hostIds) services.hosts.heartbeat(id);
}, 1_000);
const started = performance.now();
let next = 0;
let created = 0;
let lastPrinted = started;
await Promise.all(
  Array.from({ length: concurrency }, async () => {
    for (let index = next++; index < count; index = next++) {
      const name = `${args.prefix}${String(index).padStart(6, '0')}`;
      const operation = await services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 256, project: args.project, waitReady: false });
      const done = await services.operations.wait(operation.id);
      if (done.status !== 'succeeded') throw new Error(`Seeding VM ${name} failed: ${JSON.stringify(done.error)}`);
      created += 1;
      if (performance.now() - lastPrinted > 10_000) {
        lastPrinted = performance.now();
        console.error(`seeded ${created} of ${count} (${(created / ((lastPrinted - started) / 1000)).toFixed(0)}/s)`);
      }
    }
  }),
);
const seconds = (performance.now() - started) / 1000;
clearInterval(keepAlive);
await sql`PRAGMA wal_checkpoint(TRUNCATE)`.execute(db);
await db.destroy();
const cpu = process.cpuUsage();
console.log(JSON.stringify({ created, seconds, cpuSeconds: (cpu.user + cpu.system) / 1e6 }));
