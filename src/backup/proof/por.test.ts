// The proof of retrievability end to end over an in-memory store: the client tags chunks, the
// store keeps chunks and tags and answers challenges, the client verifies. Each challenge and
// proof goes through its JSON form, as it would between the two. What a user checks: an intact
// store always passes, a damaged one fails, and 1% of the blocks damaged is caught > 97% of the time.
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { describe, it } from 'node:test';
import { isNubisError } from '../../core/errors.ts';
import { BLOCK_BYTES, blockCount } from './field.ts';
import {
  type Challenge,
  type ChunkRef,
  DEFAULT_CHALLENGE_BLOCKS,
  makeChallenge,
  type Proof,
  ProofKey,
  type ProofSource,
  prove,
  tagChunk,
  tagOf,
  verify,
} from './por.ts';
import { challengeFromJson, challengeToJson, proofFromJson, proofToJson } from './por-wire.ts';

/** The store's side: chunk bytes and tags by chunk id, both open to tampering by the test. */
class MemoryStore implements ProofSource {
  readonly data = new Map<string, Buffer>();
  readonly tags = new Map<string, Buffer>();

  async readBlock(chunkId: string, index: number): Promise<Buffer> {
    return (this.data.get(chunkId) ?? Buffer.alloc(0)).subarray(index * BLOCK_BYTES, (index + 1) * BLOCK_BYTES);
  }

  async readTag(chunkId: string, index: number): Promise<Buffer> {
    return tagOf(this.tags.get(chunkId) ?? Buffer.alloc(0), index);
  }
}

/** The client uploads `lengths` chunks of random bytes (ids hash their content); returns what it records. */
function upload(key: ProofKey, store: MemoryStore, lengths: number[]): ChunkRef[] {
  return lengths.map((byteLength) => {
    const data = randomBytes(byteLength);
    const id = createHash('sha256').update(data).digest('hex');
    store.data.set(id, data);
    store.tags.set(id, tagChunk(key, id, data));
    return { id, byteLength };
  });
}

/** One audit as it runs between the two: challenge out as JSON, proof back as JSON, verdict. */
async function audit(key: ProofKey, store: ProofSource, challenge: Challenge): Promise<boolean> {
  const received = challengeFromJson(JSON.parse(JSON.stringify(challengeToJson(challenge))));
  const proof = await prove(received, store);
  return verify(key, challenge, proofFromJson(JSON.parse(JSON.stringify(proofToJson(proof)))));
}

// 1 + 1 + 101 + 150 + 48 = 301 blocks, with partial last blocks of several sizes.
const LENGTHS = [3000, BLOCK_BYTES, 100 * BLOCK_BYTES + 17, 150 * BLOCK_BYTES, 47 * BLOCK_BYTES + 2000];

describe('proof of retrievability', () => {
  const key = ProofKey.generate();
  const store = new MemoryStore();
  const chunks = upload(key, store, LENGTHS);
  const total = chunks.reduce((sum, chunk) => sum + blockCount(chunk.byteLength), 0);

  it('passes an intact store, challenge after challenge', async () => {
    for (let round = 0; round < 50; round++) {
      const blocks = round % 2 === 0 ? DEFAULT_CHALLENGE_BLOCKS : randomInt(1, 120);
      const challenge = makeChallenge(chunks, blocks);
      assert.equal(challenge.items.length, Math.min(blocks, total));
      assert.equal(new Set(challenge.items.map((item) => `${challenge.chunks[item.chunk].id}:${item.block}`)).size, challenge.items.length);
      assert.equal(await audit(key, store, challenge), true, `round ${round}, ${blocks} blocks`);
    }
  });

  it('takes a key back from its 32-byte secret', async () => {
    const secret = key.toSecret();
    assert.equal(secret.length, 32);
    const challenge = makeChallenge(chunks, 20);
    assert.equal(verify(ProofKey.fromSecret(secret), challenge, await prove(challenge, store)), true);
    assert.equal(verify(ProofKey.generate(), challenge, await prove(challenge, store)), false);
    assert.equal(JSON.stringify(key), '{}', 'the secret does not leak into logs');
  });

  it('fails when one byte of a challenged block is flipped, wherever it is in the block', async () => {
    for (const offset of [0, 1234, 4091, 4095]) {
      const challenge = makeChallenge(chunks, 30);
      const { chunk, block } = challenge.items[randomInt(challenge.items.length)];
      const data = store.data.get(challenge.chunks[chunk].id)!;
      const at = Math.min(block * BLOCK_BYTES + offset, data.length - 1);
      data[at] ^= 0x01;
      try {
        assert.equal(await audit(key, store, challenge), false, `byte ${at} of block ${block}`);
      } finally {
        data[at] ^= 0x01;
      }
      assert.equal(await audit(key, store, challenge), true);
    }
  });

  it('fails when a challenged tag is wrong: another block of the chunk, or the same block of another chunk', async () => {
    const challenge = makeChallenge([chunks[2]], 40);
    const { block } = challenge.items[0];
    const tags = store.tags.get(chunks[2].id)!;
    const saved = Buffer.from(tagOf(tags, block));
    // chunks[3] has 150 blocks, more than chunks[2]: it has a tag at every index of it.
    for (const wrong of [tagOf(tags, block === 0 ? 1 : 0), tagOf(store.tags.get(chunks[3].id)!, block)]) {
      Buffer.from(wrong).copy(tags, block * 32);
      try {
        assert.equal(await audit(key, store, challenge), false);
      } finally {
        saved.copy(tags, block * 32);
      }
    }
    assert.equal(await audit(key, store, challenge), true);
  });

  it('fails when a chunk is cut short, at a block boundary or inside its last block', async () => {
    const chunk = chunks[4];
    const whole = store.data.get(chunk.id)!;
    try {
      // (Cutting only trailing zero bytes would go unseen, and lose nothing: the length is known.)
      for (const cut of [whole.length - 100, 47 * BLOCK_BYTES, 10 * BLOCK_BYTES]) {
        store.data.set(chunk.id, whole.subarray(0, cut));
        // Every block of the chunk is challenged: the client asks by the length it recorded.
        assert.equal(await audit(key, store, makeChallenge([chunk])), false, `cut at ${cut}`);
      }
    } finally {
      store.data.set(chunk.id, whole);
    }
    assert.equal(await audit(key, store, makeChallenge([chunk])), true);
  });

  it('fails a proof made for another challenge: other chunks, or the same blocks with other coefficients', async () => {
    const mine = makeChallenge(chunks.slice(0, 3));
    const others = makeChallenge(chunks.slice(3));
    assert.equal(verify(key, mine, await prove(others, store)), false);
    // An old proof replayed: same blocks, fresh coefficients.
    const again: Challenge = { chunks: mine.chunks, items: mine.items.map((item) => ({ ...item, nu: item.nu + 1n })) };
    const old: Proof = await prove(mine, store);
    assert.equal(verify(key, again, old), false);
    assert.equal(verify(key, mine, old), true);
  });

  it('fails when two chunks of the same length swap their bytes and tags', async () => {
    const [a, b] = upload(key, store, [5 * BLOCK_BYTES, 5 * BLOCK_BYTES]);
    const swapped = new MemoryStore();
    for (const [from, to] of [
      [a, b],
      [b, a],
    ]) {
      swapped.data.set(to.id, store.data.get(from.id)!);
      swapped.tags.set(to.id, store.tags.get(from.id)!);
    }
    assert.equal(await audit(key, swapped, makeChallenge([a, b])), false);
    assert.equal(await audit(key, store, makeChallenge([a, b])), true);
  });

  it('refuses a store whose block or tag cannot be read or reads back with the wrong size, naming the block', async () => {
    const challenge = makeChallenge([chunks[0]]);
    const shortTag: ProofSource = { readBlock: store.readBlock.bind(store), readTag: async () => Buffer.alloc(31) };
    await assert.rejects(prove(challenge, shortTag), (error: unknown) => isNubisError(error, 'BACKUP_PROOF_READ_FAILED') && /31 bytes/.test(error.message));
    const longBlock: ProofSource = { readBlock: async () => Buffer.alloc(BLOCK_BYTES + 1), readTag: store.readTag.bind(store) };
    await assert.rejects(prove(challenge, longBlock), (error: unknown) => isNubisError(error, 'BACKUP_PROOF_READ_FAILED') && /4097 bytes/.test(error.message));
    const gone = Object.assign(new Error('ENOENT: no such file or directory'), { code: 'ENOENT' });
    const missing: ProofSource = { readBlock: async () => Promise.reject(gone), readTag: store.readTag.bind(store) };
    await assert.rejects(
      prove(challenge, missing),
      (error: unknown) =>
        isNubisError(error, 'BACKUP_PROOF_READ_FAILED') && error.cause === gone && /could not read block 0 of chunk .*: ENOENT/.test(error.message),
    );
  });

  it('gives the same proof whatever the number of reads at once, and in whatever order they finish', async () => {
    const challenge = makeChallenge(chunks, 100);
    const one = await prove(challenge, store, { concurrency: 1 });
    // Reads that finish in random order.
    const shuffled: ProofSource = {
      readBlock: async (chunkId, index) => {
        await new Promise((resolve) => setTimeout(resolve, randomInt(3)));
        return store.readBlock(chunkId, index);
      },
      readTag: store.readTag.bind(store),
    };
    assert.deepEqual(await prove(challenge, shuffled, { concurrency: 16 }), one);
    assert.deepEqual(await prove(challenge, store, { concurrency: 0 }), one);
  });

  it('stops between blocks when aborted', async () => {
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(prove(makeChallenge(chunks), store, { signal: controller.signal }), { name: 'AbortError' });
  });
});

describe('detection rate', () => {
  // 10 chunks of 1000 blocks; 1% of the blocks (100) get one byte flipped.
  const key = ProofKey.generate();
  const store = new MemoryStore();
  const chunks = upload(key, store, new Array(10).fill(1000 * BLOCK_BYTES));
  const damaged = new Set<number>();
  while (damaged.size < 100) damaged.add(randomInt(10_000));
  for (const global of damaged) {
    const data = store.data.get(chunks[Math.floor(global / 1000)].id)!;
    data[(global % 1000) * BLOCK_BYTES + randomInt(BLOCK_BYTES)] ^= 1 << randomInt(8);
  }

  /** The fraction of `trials` audits of `blocks` blocks that fail. */
  async function detected(blocks: number, trials: number): Promise<number> {
    let failed = 0;
    for (let trial = 0; trial < trials; trial++) if (!(await audit(key, store, makeChallenge(chunks, blocks)))) failed++;
    return failed / trials;
  }

  // Expected 1 - C(9900, 460) / C(10000, 460) = 0.991. 300 trials: the chance that a correct
  // implementation falls below 0.97 (more than 9 misses for an expected 2.6) is about 0.05%.
  it('catches 1% of the blocks damaged with c = 460 at least 97% of the time', async (t) => {
    const rate = await detected(DEFAULT_CHALLENGE_BLOCKS, 300);
    t.diagnostic(`c = 460: detected ${(rate * 100).toFixed(1)}% of 300 audits (expected 99.1%)`);
    assert.ok(rate >= 0.97, `detected ${rate}`);
  });

  // The same check with c = 46 (expected 37%) shows that the assertion above can fail.
  it('catches it far less often with c = 46', async (t) => {
    const rate = await detected(46, 200);
    t.diagnostic(`c = 46: detected ${(rate * 100).toFixed(1)}% of 200 audits (expected 37.1%)`);
    assert.ok(rate < 0.6 && rate > 0.2, `detected ${rate}`);
  });
});
