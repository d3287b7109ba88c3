/**
 * VM start overhead: from `POST /v1/vms` to QEMU running and to the guest ready, beside a bare
 * `qemu-system-x86_64` start of the same guest (same kernel, initrd, memory, accelerator) in the
 * same run, so that what Nubis adds shows as the difference.
 *
 *   npx tsx bench/vm-start/vm-start.bench.ts [rounds]
 *
 * "QEMU running" is when QMP answers (Nubis: the operation's `started` event, which the agent
 * emits once QMP answered; bare: our own QMP connect). "Guest ready" is the NUBIS-READY line.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient } from '../../src/compute/qmp/qmp-client.ts';
import { READINESS_PATTERN, waitForSerialLine } from '../../src/compute/serial-log.ts';
import { cacheDir } from '../../src/core/paths.ts';
import { readTinyImage } from '../../src/images/build-tiny.ts';
import { NubisInstance } from '../../test/helpers/nubis-instance.ts';
import type { Operation } from '../../src/wire/schemas.ts';

const rounds = Number(process.argv[2] ?? 5);
const image = readTinyImage(cacheDir());
if (!image) throw new Error('Build the tiny image first: npx nubis image build tiny');

async function bareStart(dir: string, round: number): Promise<{ runningMs: number; readyMs: number }> {
  const qmpPath = join(dir, `bare-${round}.qmp`);
  const serialLog = join(dir, `bare-${round}.log`);
  const started = performance.now();
  const child = spawn(
    'qemu-system-x86_64',
    [
      '-machine',
      'pc-q35-7.2,accel=tcg',
      '-cpu',
      'qemu64',
      '-smp',
      '1',
      '-m',
      '256M',
      '-nodefaults',
      '-display',
      'none',
      '-qmp',
      `unix:${qmpPath},server=on,wait=off`,
      '-chardev',
      `file,id=s0,path=${serialLog}`,
      '-serial',
      'chardev:s0',
      '-kernel',
      image!.kernelPath,
      '-initrd',
      image!.initrdPath,
      '-append',
      'console=ttyS0 nubis.name=bare nubis.net=dhcp',
      '-netdev',
      'user,id=n0',
      '-device',
      'virtio-net-pci,netdev=n0',
    ],
    { stdio: 'ignore' },
  );
  let qmp: QmpClient | undefined;
  while (!qmp) qmp = await QmpClient.connect(qmpPath, { timeoutMs: 1000 }).catch(() => undefined);
  const runningMs = performance.now() - started;
  await waitForSerialLine(serialLog, READINESS_PATTERN, { fromOffset: 0, timeoutMs: 120_000 });
  const readyMs = performance.now() - started;
  await qmp.execute('quit').catch(() => undefined);
  await new Promise((resolve) => child.once('exit', resolve));
  return { runningMs, readyMs };
}

async function nubisStart(nubis: NubisInstance, round: number): Promise<{ runningMs: number; readyMs: number }> {
  const started = performance.now();
  const created = await nubis.api<{ operation: Operation }>('POST', '/v1/vms', { name: `bench${round}`, image: 'tiny', cpus: 1, memoryMb: 256 });
  const response = await fetch(`${nubis.url}/v1/operations/${created.body.operation.id}/events`, { headers: { authorization: `Bearer ${nubis.token}` } });
  let runningMs = 0;
  let readyMs = 0;
  let buffer = '';
  for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += Buffer.from(chunk).toString();
    if (!runningMs && buffer.includes('"stage":"started"')) runningMs = performance.now() - started;
    if (!readyMs && buffer.includes('"stage":"ready"')) readyMs = performance.now() - started;
    if (buffer.includes('event: end')) break;
  }
  const deleted = await nubis.api<{ operation: Operation }>('DELETE', `/v1/vms/bench${round}`);
  await nubis.waitOperation(deleted.body.operation.id);
  return { runningMs, readyMs };
}

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

const dir = mkdtempSync(join(tmpdir(), 'nubis-bench-start-'));
const nubis = new NubisInstance('bench-start');
try {
  await nubis.up();
  const bare: Array<{ runningMs: number; readyMs: number }> = [];
  const ours: Array<{ runningMs: number; readyMs: number }> = [];
  // Alternate, so that drift in machine load hits both sides alike.
  for (let round = 0; round < rounds; round++) {
    bare.push(await bareStart(dir, round));
    ours.push(await nubisStart(nubis, round));
  }
  const row = (name: string, runs: Array<{ runningMs: number; readyMs: number }>): string =>
    `| ${name} | ${median(runs.map((r) => r.runningMs)).toFixed(0)} | ${median(runs.map((r) => r.readyMs)).toFixed(0)} | ${runs.map((r) => r.readyMs.toFixed(0)).join(', ')} |`;
  console.log(`| start | QEMU running, median ms | guest ready, median ms | guest ready, every run (ms) |`);
  console.log(`| --- | --- | --- | --- |`);
  console.log(row('bare qemu-system-x86_64', bare));
  console.log(row('Nubis POST /v1/vms', ours));
  console.log(
    `\nNubis overhead (median): running +${(median(ours.map((r) => r.runningMs)) - median(bare.map((r) => r.runningMs))).toFixed(0)} ms, ready +${(median(ours.map((r) => r.readyMs)) - median(bare.map((r) => r.readyMs))).toFixed(0)} ms over ${rounds} rounds`,
  );
} finally {
  await nubis.destroy();
  rmSync(dir, { recursive: true, force: true });
}
