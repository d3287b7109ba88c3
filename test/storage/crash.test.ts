// Crash consistency: a writer issues writes (some FUA) and FLUSHes through NBD to a storage
// daemon that is killed with SIGKILL at a random moment, 20 times in a row. After every restart,
// each block must hold what was last acknowledged as durable (FUA, or a write acknowledged
// before an acknowledged FLUSH) or something written after that; never older data, never garbage.
// (SIGKILL keeps the page cache, so this proves the metadata journal and recovery, not fsync.)
// The same again on an encrypted volume: its ciphertext takes the same way through the engine.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { FileKeyProvider } from '../../src/storage/keys/file-key-provider.ts';
import { NbdClient } from '../../src/storage/nbd/nbd-client.ts';
import { StorageService } from '../../src/storage/service.ts';

const MiB = 1024 * 1024;
const BLOCK = 4096;
const VOLUME_BYTES = 8 * MiB;
const BLOCKS = VOLUME_BYTES / BLOCK;
const BLOCKS_PER_AU = (128 * 1024) / BLOCK;
/** 20 in CI; a torture run sets NUBIS_CRASH_KILLS=1000 (see bench/storage/README.md). */
const KILLS = Number(process.env.NUBIS_CRASH_KILLS ?? 20);
const daemonPath = new URL('../../src/storage/storage-daemon.ts', import.meta.url).pathname;

function digest(data: Buffer): string {
  return createHash('sha1').update(data).digest('hex');
}

describe('storage daemon killed with SIGKILL while writing', () => {
  let dir: string;
  let child: ChildProcess | undefined;
  const zero = digest(Buffer.alloc(BLOCK));

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nubis-crash-'));
  });

  after(async () => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  async function startDaemon(socket: string, poolsDir: string): Promise<ChildProcess> {
    const args = ['--import', 'tsx', daemonPath, '--pools', poolsDir, '--socket', socket, '--keys', join(dir, 'keys')];
    const process_ = spawn(process.execPath, args, {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const lines = createInterface({ input: process_.stdout! });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('daemon did not start')), 20_000);
      lines.once('line', (line) => {
        clearTimeout(timer);
        assert.equal(JSON.parse(line).ready, true);
        resolve();
      });
      process_.once('exit', (code) => reject(new Error(`daemon exited with ${code}`)));
    });
    return process_;
  }

  for (const encrypted of [false, true]) {
    it(`loses no FLUSH- or FUA-acknowledged write across ${KILLS} kills${encrypted ? ' (encrypted volume)' : ''}`, async (t) => {
      await crashRounds(t, encrypted);
    });
  }

  async function crashRounds(t: { diagnostic(message: string): void }, encrypted: boolean): Promise<void> {
    const started = Date.now();
    const poolsDir = join(dir, encrypted ? 'pools-encrypted' : 'pools');
    const keys = new FileKeyProvider(join(dir, 'keys'));
    const devices: string[] = [];
    for (let i = 0; i < 3; i++) {
      const path = join(dir, `dev${i}${encrypted ? '-e' : ''}.img`);
      await writeFile(path, '');
      await truncate(path, 48 * MiB);
      devices.push(path);
    }
    const { service } = await StorageService.start({ poolsDir, keys });
    await service.createPool({ name: 'crash', layout: 'raid5', devices, allocationUnit: '128K', chunk: '64K' });
    await service.createVolume('crash', 'vol', VOLUME_BYTES, { encrypted });
    await service.close();

    // Per block: the content known durable, and contents written since (acknowledged or not).
    const durable: string[] = new Array(BLOCKS).fill(zero);
    const since: Array<Set<string>> = Array.from({ length: BLOCKS }, () => new Set<string>());
    const socket = join(dir, 'nbd.sock');
    let acknowledgedWrites = 0;
    let acknowledgedFlushes = 0;
    let blocksVerified = 0;

    for (let round = 0; round <= KILLS; round++) {
      child = await startDaemon(socket, poolsDir);
      const client = await NbdClient.connect({ path: socket, exportName: 'crash/vol' });
      // Verify everything against the model, then take what is there as the new truth.
      for (let b = 0; b < BLOCKS; b += 256) {
        const data = await client.read(b * BLOCK, 256 * BLOCK);
        for (let k = 0; k < 256; k++) {
          const got = digest(data.subarray(k * BLOCK, (k + 1) * BLOCK));
          const block = b + k;
          assert.ok(got === durable[block] || since[block]!.has(got), `round ${round}: block ${block} lost a durable write`);
          durable[block] = got;
          since[block]!.clear();
          blocksVerified++;
        }
      }
      // A torture run takes half an hour: say how far it got.
      if (KILLS >= 100 && round % 100 === 0) process.stderr.write(`crash test: round ${round} of ${KILLS}, ${acknowledgedWrites} acknowledged writes\n`);
      if (round === KILLS) {
        await client.close();
        // A clean stop this time; the pool must not be open in two processes.
        const exited = new Promise<void>((resolve) => child!.once('exit', () => resolve()));
        child.kill('SIGTERM');
        await exited;
        break;
      }
      // Write until killed: batches of concurrent writes, then a FLUSH; some writes carry FUA.
      const killAfterMs = 100 + Math.floor(Math.random() * 400);
      const killer = setTimeout(() => child!.kill('SIGKILL'), killAfterMs);
      try {
        for (;;) {
          const batch: Array<{ block: number; hash: string }> = [];
          // Trim a whole allocation unit now and then, so later writes allocate fresh space and
          // the maps (not only the data) must survive the kill.
          if (Math.random() < 0.5) {
            const first = Math.floor(Math.random() * (BLOCKS / BLOCKS_PER_AU)) * BLOCKS_PER_AU;
            for (let k = 0; k < BLOCKS_PER_AU; k++) {
              since[first + k]!.add(zero);
              batch.push({ block: first + k, hash: zero });
            }
            await client.trim(first * BLOCK, BLOCKS_PER_AU * BLOCK);
          }
          const writes: Promise<void>[] = [];
          for (let i = 0; i < 16; i++) {
            const block = Math.floor(Math.random() * BLOCKS);
            const count = 1 + Math.floor(Math.random() * 4);
            const data = randomBytes(count * BLOCK);
            const fua = Math.random() < 0.2;
            for (let k = 0; k < count && block + k < BLOCKS; k++) {
              const hash = digest(data.subarray(k * BLOCK, (k + 1) * BLOCK));
              since[block + k]!.add(hash);
              batch.push({ block: block + k, hash });
            }
            const length = Math.min(count, BLOCKS - block) * BLOCK;
            writes.push(
              client.write(block * BLOCK, data.subarray(0, length), { fua }).then(() => {
                acknowledgedWrites++;
                if (fua) for (let k = 0; k < length / BLOCK; k++) durable[block + k] = digest(data.subarray(k * BLOCK, (k + 1) * BLOCK));
              }),
            );
          }
          await Promise.all(writes);
          await client.flush();
          acknowledgedFlushes++;
          // Acknowledged flush: the batch is durable (trim first, then writes; the last one wins).
          for (const { block, hash } of batch) durable[block] = hash;
        }
      } catch {
        // The daemon died under us: expected.
      } finally {
        clearTimeout(killer);
        client.destroy();
      }
      await new Promise<void>((resolve) => (child!.exitCode !== null || child!.signalCode !== null ? resolve() : child!.once('exit', () => resolve())));
    }
    assert.ok(acknowledgedWrites > KILLS * 10, `the writer got writes through (${acknowledgedWrites})`);

    // The pool reopens consistent: online, and a scrub finds nothing to repair.
    const { service: final } = await StorageService.start({ poolsDir, keys });
    assert.equal(final.getPool('crash').state, 'online');
    const report = await final.scrubPool('crash');
    assert.equal(report.unrepairedBlocks, 0);
    assert.equal(report.checksumErrors, 0);
    await final.close();
    t.diagnostic(
      `${KILLS} kills, ${acknowledgedWrites} acknowledged writes, ${acknowledgedFlushes} acknowledged flushes, ` +
        `${blocksVerified} block reads checked against the model, final scrub clean, ${Math.round((Date.now() - started) / 1000)} s`,
    );
  }
});
