/**
 * From "give me a desktop" to a screen, on a real Nubis (`nubis up`, tiny desktops cloned on a
 * storage node): a user with only a grant of the pool asks the broker for a desktop (POST
 * .../connect, as the web page's "Get a desktop" does), then follows the desktop until it runs,
 * asks for a screen ticket and opens the screen's WebSocket as the browser does; the screen is
 * there when the first RFB bytes (the server's ProtocolVersion) arrive. Two cases:
 *
 * - `spare`: a pool with a booted spare: the connect hands it over.
 * - `no spare`: a new pool with `--spare 0`: the connect clones the base, creates the VM and boots it.
 *
 *   npx tsx bench/web/desktop.bench.ts [rounds]
 *
 * The figures go to bench/web/RESULTS-desktop.md only when the machine is quiet (1-minute load
 * below 1 before and after the run); otherwise they are printed with the load and not recorded.
 */
import assert from 'node:assert/strict';
import { truncateSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import type { DesktopAssignment, MyDesktop } from '../../src/wire/desktop-schemas.ts';
import type { Operation } from '../../src/wire/schemas.ts';
import { NubisInstance } from '../../test/helpers/nubis-instance.ts';

const rounds = Number(process.argv[2] ?? 3);
const RESULTS = join(dirname(fileURLToPath(import.meta.url)), 'RESULTS-desktop.md');

interface Timing {
  connectMs: number;
  runningMs: number;
  screenMs: number;
}

/** Resolves once the screen's WebSocket delivers its first bytes (RFB ProtocolVersion). */
function firstScreenBytes(url: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    socket.once('message', () => {
      socket.close();
      resolve();
    });
    socket.once('unexpected-response', (_request, response) => reject(new Error(`The screen was refused: ${response.statusCode}`)));
    socket.once('error', reject);
  });
}

async function timeOneConnect(nubis: NubisInstance, token: string, pool: string): Promise<Timing> {
  const started = performance.now();
  const connected = await nubis.api<DesktopAssignment>('POST', `/v1/desktop-pools/${pool}/connect`, undefined, token);
  assert.equal(connected.status, 200, JSON.stringify(connected.body));
  const connectMs = performance.now() - started;
  let vm = connected.body.desktop.vm;
  for (;;) {
    const mine = await nubis.api<MyDesktop[]>('GET', '/v1/desktops', undefined, token);
    const desktop = mine.body.find((entry) => entry.pool === pool)?.desktop;
    if (desktop?.state === 'running') {
      vm = desktop.vm;
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const runningMs = performance.now() - started;
  const ticket = await nubis.api<{ path: string }>('POST', `/v1/vms/${vm}/console-ticket`, { kind: 'vnc' }, token);
  assert.equal(ticket.status, 201, JSON.stringify(ticket.body));
  await firstScreenBytes(`${nubis.url.replace('http', 'ws')}${ticket.body.path}`);
  return { connectMs, runningMs, screenMs: performance.now() - started };
}

async function leave(nubis: NubisInstance, token: string, pool: string): Promise<void> {
  const left = await nubis.api<{ operation?: Operation }>('POST', `/v1/desktop-pools/${pool}/leave`, undefined, token);
  assert.equal(left.status, 200, JSON.stringify(left.body));
  if (left.body.operation) await nubis.waitOperation(left.body.operation.id);
}

async function createPool(nubis: NubisInstance, name: string, spare: number): Promise<void> {
  await nubis.cliJson([
    'desktop',
    'pool',
    'create',
    name,
    '--image',
    'tiny',
    '--base',
    'p1/base',
    '--size',
    '1',
    '--spare',
    String(spare),
    '--mode',
    'floating',
    '--memory',
    '128',
  ]);
  await nubis.cliJson(['desktop', 'pool', 'grant', name, 'bench']);
}

/** The pool's one desktop is a booted, free spare again. */
async function spareReady(nubis: NubisInstance, name: string): Promise<void> {
  for (;;) {
    const pool = await nubis.cliJson<{ desktops: Array<{ state: string; assignedTo?: string }> }>(['desktop', 'pool', 'show', name]);
    if (pool.desktops.length === 1 && pool.desktops[0]!.state === 'running' && !pool.desktops[0]!.assignedTo) return;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

function row(label: string, timings: Timing[]): string {
  const figure = (pick: (t: Timing) => number) =>
    `${(median(timings.map(pick)) / 1000).toFixed(2)} s (${timings.map((t) => (pick(t) / 1000).toFixed(2)).join(', ')})`;
  return `| ${label} | ${figure((t) => t.connectMs)} | ${figure((t) => t.runningMs)} | ${figure((t) => t.screenMs)} |`;
}

async function main(): Promise<void> {
  const loadBefore = loadavg()[0]!;
  const nubis = new NubisInstance('bench-desktop');
  const spare: Timing[] = [];
  const cold: Timing[] = [];
  try {
    await nubis.up();
    const device = join(nubis.dataDir, 'member.img');
    writeFileSync(device, '');
    truncateSync(device, 512 * 2 ** 20);
    await nubis.cliJson(['pool', 'create', 'p1', '--layout', 'raid0', '--device', device]);
    await nubis.cliJson(['volume', 'create', 'base', '--pool', 'p1', '--size', '16M']);
    const user = await nubis.cli(['user', 'create', 'bench', '--password-stdin'], { input: 'bench-password-1\n' });
    assert.equal(user.code, 0, user.stderr);
    const login = await nubis.api<{ secret: string }>('POST', '/v1/auth/login', { user: 'bench', password: 'bench-password-1' }, null);
    const token = login.body.secret;

    await createPool(nubis, 'warm', 1);
    for (let round = 0; round < rounds; round++) {
      await spareReady(nubis, 'warm');
      spare.push(await timeOneConnect(nubis, token, 'warm'));
      await leave(nubis, token, 'warm');
      console.log(`spare round ${round + 1}: ${JSON.stringify(spare.at(-1))}`);
    }
    await nubis.cliJson(['desktop', 'pool', 'delete', 'warm', '--force']);
    for (let round = 0; round < rounds; round++) {
      const name = `cold${round}`;
      await createPool(nubis, name, 0);
      cold.push(await timeOneConnect(nubis, token, name));
      await leave(nubis, token, name);
      await nubis.cliJson(['desktop', 'pool', 'delete', name, '--force']);
      console.log(`no-spare round ${round + 1}: ${JSON.stringify(cold.at(-1))}`);
    }
  } finally {
    await nubis.destroy();
  }
  const loadAfter = loadavg()[0]!;
  const table = [
    '| case | connect answered | desktop running | first screen bytes |',
    '| --- | --- | --- | --- |',
    row('booted spare', spare),
    row('no spare (clone, create, boot)', cold),
  ].join('\n');
  console.log(table);
  console.log(`1-minute load: ${loadBefore.toFixed(2)} before, ${loadAfter.toFixed(2)} after`);
  if (loadBefore >= 1 || loadAfter >= 1) {
    console.log(`Not recorded in ${RESULTS}: the machine was not quiet (load >= 1)`);
    return;
  }
  const text = [
    '# From "give me a desktop" to a screen',
    '',
    `${new Date().toISOString()}, ${cpus().length} x ${cpus()[0]?.model ?? 'CPU'}, ${rounds} rounds each, medians (each round in brackets).`,
    `1-minute load ${loadBefore.toFixed(2)} before, ${loadAfter.toFixed(2)} after. \`npx tsx bench/web/desktop.bench.ts ${rounds}\``,
    '',
    table,
    '',
  ].join('\n');
  writeFileSync(RESULTS, text);
  console.log(`Recorded in ${RESULTS}`);
}

await main();
