/**
 * One API under test for bench/access, in a process of its own: a fake cluster with project
 * `web`, user `bench` holding `member` there, an API token of it and `--vms` VMs in `web`, and the
 * API built with `--build enforce` (accessControl `enforce`) or `baseline` (`tokenOnly`),
 * listening on 127.0.0.1. Its own process because the audit context is an AsyncLocalStorage,
 * which once used adds a promise hook to every promise of the process: a baseline in the same
 * process would pay part of enforce's cost.
 *
 * Protocol (IPC): it sends `ready` (url, token) or `failed`; it answers `reset-networks` with
 * `reset`; when the parent disconnects (also when the parent dies) it removes everything it made
 * and exits.
 */
import { parseArgs } from 'node:util';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import type { Principal } from '../../src/access/authorize.ts';
import { buildApp } from '../../src/api/app.ts';
import { type FakeCluster, fakeCluster } from '../../test/helpers/fake-cluster.ts';

/** What the server tells the parent. */
export type ServerMessage = { type: 'ready'; url: string; token: string } | { type: 'failed'; error: string } | { type: 'reset'; error?: string };
/** What the parent asks of the server. */
export type ServerRequest = { type: 'reset-networks' };

const { values: args } = parseArgs({ options: { build: { type: 'string' }, vms: { type: 'string', default: '20' } } });
const build = args.build;
if (build !== 'enforce' && build !== 'baseline') throw new Error(`Option --build is ${build}: give enforce or baseline`);
const vmCount = Number(args.vms);
const WEB_ID = 'prj-web';

let cluster: FakeCluster | undefined;
let app: FastifyInstance | undefined;
let closing: Promise<void> | undefined;

/** Closes the API, then the cluster (which removes its folder); once, whoever asks first. */
function close(): Promise<void> {
  closing ??= (async () => {
    await app?.close();
    await cluster?.close();
  })();
  return closing;
}

async function start(): Promise<{ url: string; token: string }> {
  // A fake host has 4 cores, 16 vCPUs at the 4x overcommit: one host per 16 VMs of 1 vCPU.
  cluster = await fakeCluster(Array.from({ length: Math.ceil(vmCount / 16) }, (_, index) => `h${index + 1}`));
  const { db, services } = cluster;
  await db.insertInto('projects').values({ id: WEB_ID, name: 'web', created_at: new Date().toISOString(), requirements: '{}' }).execute();
  await services.access.users.create('bench');
  const user = await services.access.users.row('bench');
  await services.access.roles.grant({ type: 'user', id: user.id, name: 'bench' }, 'member', WEB_ID);
  const owner: Principal = {
    userId: user.id,
    userName: 'bench',
    tokenId: '',
    tokenName: '',
    grants: await services.access.tokens.grantsOf(user.id),
    tokenProjectId: null,
    tokenRole: null,
  };
  const { secret: token } = await services.access.tokens.create(owner, { name: 'bench' });
  for (let index = 0; index < vmCount; index++) {
    const operation = await services.vms.create({ name: `vm${index}`, image: 'tiny', cpus: 1, memoryMb: 256, project: 'web', waitReady: false });
    const done = await services.operations.wait(operation.id);
    if (done.status !== 'succeeded') throw new Error(`VM vm${index} was not created: ${JSON.stringify(done)}`);
  }
  app = await buildApp(services, { accessControl: build === 'enforce' ? 'enforce' : 'tokenOnly' });
  await app.listen({ host: '127.0.0.1', port: 0 });
  return { url: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, token };
}

const send = (message: ServerMessage) => process.send?.(message);

process.on('message', (request: ServerRequest) => {
  if (request.type !== 'reset-networks' || !cluster) return;
  // The create route reads every network of the project (its subnet overlap check): each run starts with none.
  cluster.db
    .deleteFrom('networks')
    .where('project_id', '=', WEB_ID)
    .execute()
    .then(
      () => send({ type: 'reset' }),
      (error: Error) => send({ type: 'reset', error: error.message }),
    );
});
process.on('disconnect', () => void close().finally(() => process.exit(0)));
// Ctrl-C reaches the whole process group: the parent ends this process by disconnecting.
process.on('SIGINT', () => undefined);

start().then(
  (ready) => send({ type: 'ready', ...ready }),
  async (error: Error) => {
    send({ type: 'failed', error: error.stack ?? error.message });
    await close();
    process.exit(1);
  },
);
