/**
 * Costs of the backup store's proof of retrievability (src/backup/proof/): sizes, the client's
 * time to tag a 4 MiB chunk, make a challenge and verify, and the store's time to prove with
 * blocks and tags read from real files. Prints a table; records nothing (run it on a quiet machine).
 *
 *   node --import tsx bench/backup-proof/run.ts [--chunks 32] [--rounds 20] [--blocks 460]
 *       [--concurrency 8] [--dir /tmp] [--drop-caches]
 *
 * `--chunks` 4 MiB chunk files (and their tag files) are written to a temporary folder under
 * `--dir`, which is removed at the end. Each round is one audit as it runs between the two sides:
 * the client makes a challenge and sends its JSON; the store parses it, reads the challenged
 * blocks and tags from the files and answers the proof's JSON; the client parses and verifies it.
 * Files just written sit in the page cache, so the proof's reads are system calls, not disk
 * seeks; `--drop-caches` (root only, and it empties the cache of the whole machine) drops the
 * cache before each proof, to time cold reads.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { type FileHandle, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BLOCK_BYTES, ELEMENT_BYTES } from '../../src/backup/proof/field.ts';
import { type ChunkRef, makeChallenge, PROOF_BYTES, ProofKey, type ProofSource, prove, tagChunk, verify } from '../../src/backup/proof/por.ts';
import { challengeFromJson, challengeToJson, proofFromJson, proofToJson } from '../../src/backup/proof/por-wire.ts';

const MiB = 1024 * 1024;
const CHUNK_BYTES = 4 * MiB;
const { values } = parseArgs({
  options: {
    chunks: { type: 'string', default: '32' },
    rounds: { type: 'string', default: '20' },
    blocks: { type: 'string', default: '460' },
    concurrency: { type: 'string', default: '8' },
    dir: { type: 'string', default: tmpdir() },
    'drop-caches': { type: 'boolean', default: false },
  },
});
const chunkCount = Number(values.chunks);
const rounds = Number(values.rounds);
const blocks = Number(values.blocks);
const concurrency = Number(values.concurrency);

/** The store's side over files: `<id>` holds a chunk, `<id>.tags` its tags; handles stay open. */
class FileProofSource implements ProofSource {
  readonly #dir: string;
  readonly #handles = new Map<string, Promise<FileHandle>>();

  constructor(dir: string) {
    this.#dir = dir;
  }

  async readBlock(chunkId: string, index: number): Promise<Buffer> {
    return this.#read(chunkId, BLOCK_BYTES, index * BLOCK_BYTES);
  }

  async readTag(chunkId: string, index: number): Promise<Buffer> {
    return this.#read(`${chunkId}.tags`, ELEMENT_BYTES, index * ELEMENT_BYTES);
  }

  async close(): Promise<void> {
    for (const handle of this.#handles.values()) await (await handle).close();
  }

  async #read(name: string, length: number, position: number): Promise<Buffer> {
    let handle = this.#handles.get(name);
    if (!handle) this.#handles.set(name, (handle = open(join(this.#dir, name), 'r')));
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await (await handle).read(buffer, 0, length, position);
    return buffer.subarray(0, bytesRead);
  }
}

const quantile = (samples: number[], q: number): number => {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
};
const ms = (value: number): string => `${value.toFixed(1)} ms`;
const spread = (samples: number[]): string => `${ms(quantile(samples, 0.5))} (min ${ms(Math.min(...samples))}, p90 ${ms(quantile(samples, 0.9))})`;

/** Times `run` once, in milliseconds, with what it returned. */
function timed<T>(run: () => T): [T, number] {
  const started = performance.now();
  const result = run();
  return [result, performance.now() - started];
}

async function main(): Promise<void> {
  const loadBefore = loadavg()[0];
  const dir = await mkdtemp(join(values.dir, 'nubis-bench-por-'));
  const source = new FileProofSource(dir);
  try {
    const key = ProofKey.generate();
    const chunks: ChunkRef[] = [];
    const tagMs: number[] = [];
    let tagBytes = 0;
    for (let n = 0; n < chunkCount; n++) {
      const data = randomBytes(CHUNK_BYTES);
      const id = createHash('sha256').update(data).digest('hex');
      const [tags, elapsed] = timed(() => tagChunk(key, id, data));
      tagMs.push(elapsed);
      tagBytes = tags.length;
      await writeFile(join(dir, id), data);
      await writeFile(join(dir, `${id}.tags`), tags);
      chunks.push({ id, byteLength: data.length });
    }

    const challengeMs: number[] = [];
    const proveMs: number[] = [];
    const verifyMs: number[] = [];
    let challengeJsonBytes = 0;
    let proofJsonBytes = 0;
    // Round -1 warms the JIT up and is not counted.
    for (let round = -1; round < rounds; round++) {
      // Client: a fresh challenge, sent as JSON.
      const [challenge, makeMs] = timed(() => makeChallenge(chunks, blocks));
      const [challengeText, encodeMs] = timed(() => JSON.stringify(challengeToJson(challenge)));
      challengeJsonBytes = Buffer.byteLength(challengeText);
      if (values['drop-caches']) dropCaches();
      // Store: parse, read the blocks and tags from the files, answer JSON.
      const started = performance.now();
      const proof = await prove(challengeFromJson(JSON.parse(challengeText)), source, { concurrency });
      const proofText = JSON.stringify(proofToJson(proof));
      const storeMs = performance.now() - started;
      proofJsonBytes = Buffer.byteLength(proofText);
      // Client: parse and verify.
      const [ok, checkMs] = timed(() => verify(key, challenge, proofFromJson(JSON.parse(proofText))));
      if (!ok) throw new Error(`Round ${round}: the proof of an intact store did not verify`);
      if (round < 0) continue;
      challengeMs.push(makeMs + encodeMs);
      proveMs.push(storeMs);
      verifyMs.push(checkMs);
    }

    const totals = proveMs.map((value, n) => value + verifyMs[n]);
    const rows: [string, string][] = [
      ['proof size', `${PROOF_BYTES} bytes (JSON ${proofJsonBytes} bytes)`],
      [`challenge size, c = ${blocks}`, `JSON ${challengeJsonBytes} bytes`],
      ['tag overhead per 4 MiB chunk', `${tagBytes} bytes (${((tagBytes / CHUNK_BYTES) * 100).toFixed(2)}%)`],
      ['client: tag a 4 MiB chunk', `${spread(tagMs)}, ${(CHUNK_BYTES / MiB / (quantile(tagMs, 0.5) / 1000)).toFixed(1)} MiB/s`],
      ['client: make a challenge (+ JSON)', spread(challengeMs)],
      [`store: prove c = ${blocks} from files (+ JSON)`, spread(proveMs)],
      ['client: verify (+ JSON)', spread(verifyMs)],
      ['prove + verify', spread(totals)],
    ];
    const width = Math.max(...rows.map(([name]) => name.length));
    console.log(
      `\n${chunkCount} chunks of 4 MiB (${chunkCount * 1024} blocks), ${rounds} audits, concurrency ${concurrency}` +
        `${values['drop-caches'] ? ', caches dropped before each proof' : ', reads from the page cache'}`,
    );
    console.log(
      `${cpus().length} CPUs (${cpus()[0]?.model ?? 'unknown'}), Node ${process.version}, load ${loadBefore.toFixed(2)} -> ${loadavg()[0].toFixed(2)}\n`,
    );
    console.log(`| ${'measure'.padEnd(width)} | value |`);
    console.log(`| ${'-'.repeat(width)} | ----- |`);
    for (const [name, value] of rows) console.log(`| ${name.padEnd(width)} | ${value} |`);
  } finally {
    await source.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Empties the page cache (root only): the next reads of the chunk files go to the disk. Dirty pages are not dropped, hence the sync. */
function dropCaches(): void {
  execFileSync('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '1');
}

await main();
