// Malformed challenges, proofs, keys and chunks are refused with their code and a sentence that
// names what is wrong, never with a crash: the store parses challenges from clients, the client
// parses proofs from the store, and neither trusts the other's bytes.
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { describe, it } from 'node:test';
import { isNubisError } from '../../core/errors.ts';
import { BLOCK_BYTES, ELEMENT_BYTES, elementToBytes, FIELD_PRIME } from './field.ts';
import { type ChunkRef, makeChallenge, MAX_CHALLENGE_BLOCKS, type Proof, PROOF_BYTES, ProofKey, prove, tagChunk, tagOf, verify } from './por.ts';
import { type ChallengeJson, challengeFromJson, challengeToJson, proofFromBytes, proofFromJson, proofToBytes, proofToJson } from './por-wire.ts';

/** Asserts that `run` throws a NubisError with `code` and a message matching `pattern`, in the house form. */
function refused(run: () => unknown, code: string, pattern: RegExp): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(isNubisError(error, code), `expected ${code}, got ${error}`);
    assert.match(error.message, pattern);
    assert.match(error.message, /^[A-Z].*[^.]$/s, 'a sentence with a capital and no trailing period');
    return true;
  });
}

const key = ProofKey.generate();
const data = randomBytes(3 * BLOCK_BYTES + 100);
const id = 'ab'.repeat(32);
const tags = tagChunk(key, id, data);
const chunks: ChunkRef[] = [{ id, byteLength: data.length }];
const source = {
  readBlock: async (_id: string, index: number) => data.subarray(index * BLOCK_BYTES, (index + 1) * BLOCK_BYTES),
  readTag: async (_id: string, index: number) => tagOf(tags, index),
};
const challenge = makeChallenge(chunks);
const good = (): ChallengeJson => JSON.parse(JSON.stringify(challengeToJson(challenge)));
const proof: Proof = await prove(challenge, source);

describe('challenge JSON', () => {
  it('round-trips', () => {
    assert.deepEqual(challengeFromJson(good()), challenge);
    assert.equal(verify(key, challengeFromJson(good()), proof), true);
  });

  it('refuses a value of the wrong shape', () => {
    for (const value of [null, undefined, 42, 'challenge', [], [good()]]) refused(() => challengeFromJson(value), 'BACKUP_CHALLENGE_INVALID', /is an object/);
    refused(() => challengeFromJson({ ...good(), extra: 1 }), 'BACKUP_CHALLENGE_INVALID', /no field "extra"/);
    const { items: _, ...noItems } = good();
    refused(() => challengeFromJson(noItems), 'BACKUP_CHALLENGE_INVALID', /lacks the field "items"/);
    refused(() => challengeFromJson({ ...good(), version: 2 }), 'BACKUP_CHALLENGE_INVALID', /version 2 is not 1/);
    refused(() => challengeFromJson({ ...good(), chunks: 'x' }), 'BACKUP_CHALLENGE_INVALID', /list of at most/);
  });

  it('refuses a chunk id that is not 64 lowercase hex digits, and a bad length', () => {
    for (const bad of [id.toUpperCase(), id.slice(1), `${id}0`, `${id.slice(2)}zz`, 7, null]) {
      const json = good();
      json.chunks[0].id = bad as string;
      refused(() => challengeFromJson(json), 'BACKUP_CHALLENGE_INVALID', /Challenge chunk 0: id .* is not 64 lowercase hex digits/);
    }
    for (const bad of [-1, 1.5, '4096', 2 ** 31, Number.NaN]) {
      const json = good();
      json.chunks[0].byteLength = bad as number;
      refused(() => challengeFromJson(json), 'BACKUP_CHALLENGE_INVALID', /Challenge chunk 0: length .* is not 0 to/);
    }
  });

  it('refuses an item outside the chunks: a chunk not listed, a block past the end', () => {
    const json = good();
    json.items[0][0] = 1;
    refused(() => challengeFromJson(json), 'BACKUP_CHALLENGE_INVALID', /item 0: chunk 1 is not among the 1 chunks listed/);
    const past = good();
    past.items[0][1] = 4; // 3 blocks and 100 bytes: blocks 0 to 3
    refused(() => challengeFromJson(past), 'BACKUP_CHALLENGE_INVALID', /item 0: block 4 is outside chunk ab.* \(4 blocks\)/);
    const negative = good();
    negative.items[1][1] = -1;
    refused(() => challengeFromJson(negative), 'BACKUP_CHALLENGE_INVALID', /item 1: block -1 is outside/);
    const shrunk = good();
    shrunk.chunks[0].byteLength = 3 * BLOCK_BYTES; // block 3 no longer exists
    refused(() => challengeFromJson(shrunk), 'BACKUP_CHALLENGE_INVALID', /block 3 is outside/);
  });

  it('refuses coefficients that are not 32 hex digits or are zero, a block twice, and sizes out of bounds', () => {
    for (const bad of ['0'.repeat(31), 'F'.repeat(32), 'g'.repeat(32), 12, null]) {
      const json = good();
      json.items[0][2] = bad as string;
      refused(() => challengeFromJson(json), 'BACKUP_CHALLENGE_INVALID', /coefficient .* is not 32 lowercase hex digits/);
    }
    const zero = good();
    zero.items[0][2] = '0'.repeat(32);
    refused(() => challengeFromJson(zero), 'BACKUP_CHALLENGE_INVALID', /coefficient 0 is not in \[1, 2\^128\)/);
    const twice = good();
    twice.items[1] = [...twice.items[0]];
    refused(() => challengeFromJson(twice), 'BACKUP_CHALLENGE_INVALID', /item 1: block 0 of chunk ab.* is challenged twice/);
    refused(() => challengeFromJson({ ...good(), items: [] }), 'BACKUP_CHALLENGE_INVALID', /names 1 to 4096 blocks, not 0/);
    refused(() => challengeFromJson({ ...good(), items: [[0, 0]] }), 'BACKUP_CHALLENGE_INVALID', /item 0 \[0,0\] is not \[chunk, block, nu\]/);
    const huge = { ...good(), items: new Array(MAX_CHALLENGE_BLOCKS + 1).fill([0, 0, '1'.repeat(32)]) };
    refused(() => challengeFromJson(huge), 'BACKUP_CHALLENGE_INVALID', /at most 4096 items/);
    const idle = good();
    idle.chunks.push({ id: 'cd'.repeat(32), byteLength: 10 });
    refused(() => challengeFromJson(idle), 'BACKUP_CHALLENGE_INVALID', /chunk 1 is listed but none of its blocks is challenged/);
  });

  it('refuses a chunk listed twice', () => {
    const json = good();
    json.chunks.push({ ...json.chunks[0] });
    json.items.push([1, 0, '1'.repeat(32)]);
    refused(() => challengeFromJson(json), 'BACKUP_CHALLENGE_INVALID', /chunk ab.* is listed twice/);
  });
});

describe('proof JSON and bytes', () => {
  const bytes = proofToBytes(proof);

  it('is 4288 bytes whatever the challenge, and round-trips', () => {
    assert.equal(bytes.length, PROOF_BYTES);
    assert.equal(PROOF_BYTES, 4288);
    assert.deepEqual(proofFromBytes(bytes), proof);
    assert.deepEqual(proofFromJson(JSON.parse(JSON.stringify(proofToJson(proof)))), proof);
  });

  it('refuses the wrong length, an element not below p, and base64 that is not canonical', () => {
    refused(() => proofFromBytes(bytes.subarray(1)), 'BACKUP_PROOF_MALFORMED', /A proof is 4288 bytes, not 4287/);
    refused(() => proofFromBytes(Buffer.concat([bytes, Buffer.alloc(1)])), 'BACKUP_PROOF_MALFORMED', /not 4289/);
    for (const [at, name] of [
      [0, 'mu_0'],
      [100, 'mu_100'],
      [133, 'sigma'],
    ] as const) {
      for (const value of [FIELD_PRIME, (1n << 256n) - 1n]) {
        const bad = Buffer.from(bytes);
        Buffer.from(value.toString(16).padStart(64, '0'), 'hex').copy(bad, at * ELEMENT_BYTES);
        refused(() => proofFromBytes(bad), 'BACKUP_PROOF_MALFORMED', new RegExp(`element ${name} is not below p`));
        refused(() => proofFromJson({ version: 1, proof: bad.toString('base64') }), 'BACKUP_PROOF_MALFORMED', /is not below p/);
      }
    }
    const text = bytes.toString('base64');
    for (const bad of [text.slice(4), `${text}AAAA`, text.replace(/[+/]/, '-'), ` ${text.slice(1)}`, `${text.slice(0, -3)}B==`, 4288, null])
      refused(() => proofFromJson({ version: 1, proof: bad }), 'BACKUP_PROOF_MALFORMED', /A proof is .*base64/);
    refused(() => proofFromJson({ version: 1, proof: text, sigma: '0' }), 'BACKUP_PROOF_MALFORMED', /no field "sigma"/);
    refused(() => proofFromJson({ version: '1', proof: text }), 'BACKUP_PROOF_MALFORMED', /version "1" is not 1/);
    refused(() => proofFromJson('AAAA'), 'BACKUP_PROOF_MALFORMED', /A proof is an object/);
  });

  it('is refused by verify when it is not s elements below p, rather than judged', () => {
    const malformed: unknown[] = [
      { mu: proof.mu.slice(1), sigma: proof.sigma },
      { mu: [...proof.mu.slice(1), FIELD_PRIME], sigma: proof.sigma },
      { mu: [-1n, ...proof.mu.slice(1)], sigma: proof.sigma },
      { mu: [1, ...proof.mu.slice(1)], sigma: proof.sigma },
      { mu: proof.mu, sigma: FIELD_PRIME + proof.sigma },
      { mu: proof.mu },
      null,
    ];
    for (const bad of malformed) refused(() => verify(key, challenge, bad as Proof), 'BACKUP_PROOF_MALFORMED', /[Pp]roof/);
    assert.equal(verify(key, challenge, proof), true);
  });
});

describe('keys, chunks and challenges made locally', () => {
  it('refuses a key secret that is not 32 bytes', () => {
    for (const bad of [Buffer.alloc(31), Buffer.alloc(33), 'secret', undefined])
      refused(() => ProofKey.fromSecret(bad as Buffer), 'BACKUP_PROOF_KEY_INVALID', /A proof key secret is 32 bytes, not/);
  });

  it('refuses to tag a chunk whose id is not 64 lowercase hex digits, and reads no tag past the end', () => {
    refused(() => tagChunk(key, 'AB'.repeat(32), data), 'BACKUP_CHUNK_INVALID', /Chunk: id "ABAB.*" is not 64 lowercase hex digits/);
    refused(() => tagOf(tags, 4), 'BACKUP_CHUNK_INVALID', /Block 4 has no tag: the chunk has 4 blocks/);
    refused(() => tagOf(tags.subarray(1), 0), 'BACKUP_CHUNK_INVALID', /127 bytes is not a whole number of tags/);
    assert.equal(tagChunk(key, id, Buffer.alloc(0)).length, 0);
  });

  it('refuses a challenge of no block or of too many', () => {
    refused(() => makeChallenge(chunks, 0), 'BACKUP_CHALLENGE_INVALID', /names 1 to 4096 blocks, not 0/);
    refused(() => makeChallenge(chunks, MAX_CHALLENGE_BLOCKS + 1), 'BACKUP_CHALLENGE_INVALID', /not 4097/);
    refused(() => makeChallenge([]), 'BACKUP_CHALLENGE_INVALID', /at least one chunk/);
    refused(() => makeChallenge([{ id, byteLength: 0 }]), 'BACKUP_CHALLENGE_INVALID', /No block to challenge/);
    refused(() => makeChallenge([chunks[0], chunks[0]]), 'BACKUP_CHALLENGE_INVALID', /listed twice/);
  });
});

describe('random damage to the JSON forms', () => {
  const junk = [null, true, -1, 0, 1, 1.5, 2 ** 53, 1e308, '', '0', 'zz', 'A'.repeat(5720), [], [0, 0, '1'.repeat(32)], {}, { id }];

  /** A copy of `value` with one node, picked at random, replaced by junk. */
  function damage(value: unknown): unknown {
    const copy = JSON.parse(JSON.stringify(value));
    const paths: (string | number)[][] = [];
    const walk = (node: unknown, path: (string | number)[]): void => {
      paths.push(path);
      if (node && typeof node === 'object') for (const [k, child] of Object.entries(node)) walk(child, [...path, Array.isArray(node) ? Number(k) : k]);
    };
    walk(copy, []);
    const path = paths[randomInt(paths.length)];
    const replacement = junk[randomInt(junk.length)];
    if (path.length === 0) return replacement;
    type Node = Record<string | number, unknown>;
    const parent = path.slice(0, -1).reduce((node: Node, k) => node[k] as Node, copy as Node);
    parent[path.at(-1)!] = replacement;
    return copy;
  }

  it('is either still valid or refused with its code, never another error', () => {
    const proofJson = proofToJson(proof);
    for (let round = 0; round < 2000; round++) {
      for (const [parse, json, code] of [
        [challengeFromJson, challengeToJson(challenge), 'BACKUP_CHALLENGE_INVALID'],
        [proofFromJson, proofJson, 'BACKUP_PROOF_MALFORMED'],
      ] as const) {
        const damaged = damage(json);
        try {
          parse(damaged);
        } catch (error) {
          assert.ok(isNubisError(error, code), `${JSON.stringify(damaged).slice(0, 200)}: ${error}`);
        }
      }
    }
    // An element not below p in a proof that is otherwise well formed.
    refused(
      () => proofFromBytes(Buffer.concat([proofToBytes(proof).subarray(0, PROOF_BYTES - 32), elementToBytes(0n).fill(0xff)])),
      'BACKUP_PROOF_MALFORMED',
      /sigma/,
    );
  });
});
