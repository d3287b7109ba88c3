/**
 * Proof of retrievability for the encrypted backup store: the client, who holds a 32-byte
 * secret, checks that the store still holds a backup's chunks without downloading them. This is
 * the private-verification scheme (built on a PRF) of H. Shacham and B. Waters, "Compact Proofs
 * of Retrievability", ASIACRYPT 2008, LNCS 5350, pp. 90-107; full version in the Journal of
 * Cryptology 26(3):442-483, 2013, doi:10.1007/s00145-012-9129-2.
 *
 * Parameters (field.ts): the field Z_p with p = 2^255 - 19. A chunk file (opaque encrypted bytes,
 * named by a 64-hex-digit id) is cut into blocks of 4096 bytes, the last one zero-padded, and a
 * block into s = 133 sectors m_i1..m_is of 31 bytes, each below 2^248 < p.
 *
 * Key: alpha_1..alpha_s in Z_p and a PRF key, all derived from one 32-byte secret, so the key is
 * stored and handed over as those 32 bytes:
 *   k_prf   = HMAC-SHA256(secret, "nubis-por-v1 prf")
 *   alpha_j = HMAC-SHA512(secret, "nubis-por-v1 alpha" || u16 j) mod p,   j = 0..s-1
 *   f(C, i) = HMAC-SHA512(k_prf, "nubis-por-v1 block" || id(C) || u64 len(C) || u64 i) mod p
 * (512 bits reduced mod p: the bias is below 2^-256). f names the chunk, its byte length and the
 * block, so a tag is valid at its own place only, and a chunk cut short fails.
 *
 * Tag of block i of chunk C: sigma_i = f(C, i) + sum_j alpha_j m_ij, 32 bytes, kept by the store
 * beside the chunk (32 KiB per 4 MiB chunk, 0.78%). Challenge: c distinct blocks drawn uniformly
 * from all blocks of the chunks listed, each with a random 128-bit coefficient nu != 0. Proof (the
 * store, no secret): mu_j = sum nu_i m_ij and sigma = sum nu_i sigma_i, s + 1 elements, 4288
 * bytes whatever c is. Verify: sigma == sum nu_i f(C_i, b_i) + sum_j alpha_j mu_j (mod p).
 *
 * Why c = 460: a store that lost or altered a fraction d of the blocks passes only when every
 * challenged block is intact, with probability at most (1 - d)^c (less when drawn without
 * replacement, as here). For d = 1%, 0.99^460 = 0.0098: caught more than 99% of the time; c = 46
 * would catch it 37% of the time. c costs the store c block reads and the challenge 16 bytes a
 * block; the proof stays 4288 bytes.
 *
 * Not the paper's full retrievability: it extracts a file from any store that passes often enough
 * because the file was erasure-coded before tagging. Backup chunks are not, so what this gives is
 * the sampling bound above: losing 1% of the blocks is caught, a single lost block with
 * probability c/n only. Erasure-coding each chunk before tagging would give the paper's guarantee
 * with this same code.
 *
 * What the store learns: the chunk ids and lengths (it has them), which blocks are challenged
 * and their coefficients, and the tags. A tag is a PRF output plus a sum, indistinguishable from
 * random without the key: it tells nothing of alpha or f. A proof is linear combinations of the
 * encrypted blocks it holds, so whoever sees one learns no plaintext. Answering for data it does
 * not hold means finding sigma for an unknown f and alpha; the paper reduces that to breaking the
 * PRF, with a 1/p term.
 *
 * One rule for callers: a chunk id with a byte length names one content forever. Tags of two
 * contents under the same id and length give the store sigma - sigma' = sum alpha_j (m_j - m'_j),
 * linear equations in the alphas, and 133 of them give away the key. Chunk ids that hash the
 * chunk's bytes keep the rule; the paper keeps it with a fresh key per file, we with one key for
 * the whole store whose block index is (id, length, i).
 */
import { createHmac, randomBytes, randomInt } from 'node:crypto';
import { messageOf, NubisError } from '../../core/errors.ts';
import {
  BLOCK_BYTES,
  bigIntFromBytes,
  blockCount,
  blockSectors,
  ELEMENT_BYTES,
  elementFromBytes,
  elementToBytes,
  FIELD_PRIME,
  modP,
  SECTORS_PER_BLOCK,
} from './field.ts';

/** c when the caller names none: 1% of the blocks lost is caught with probability > 99%. */
export const DEFAULT_CHALLENGE_BLOCKS = 460;
/** The most blocks one challenge may name: bounds what it makes the store read (16 MiB). */
export const MAX_CHALLENGE_BLOCKS = 4096;
/** The largest chunk a challenge may name, far above the store's 4 MiB chunks. */
export const MAX_CHUNK_BYTES = 2 ** 30;
/** Bytes of the secret a ProofKey is derived from, and serialized as. */
export const PROOF_KEY_SECRET_BYTES = 32;
/** Bytes of a challenge coefficient nu: 128 bits, a subset of Z_p as the paper allows, to keep the challenge short. */
export const COEFFICIENT_BYTES = 16;
/** Bytes of a proof: mu_1..mu_s then sigma, 32 bytes each. */
export const PROOF_BYTES = (SECTORS_PER_BLOCK + 1) * ELEMENT_BYTES;

const CHUNK_ID = /^[0-9a-f]{64}$/;
const MAX_COEFFICIENT = 1n << BigInt(COEFFICIENT_BYTES * 8);
const LABEL_PRF = Buffer.from('nubis-por-v1 prf');
const LABEL_ALPHA = Buffer.from('nubis-por-v1 alpha');
const LABEL_BLOCK = Buffer.from('nubis-por-v1 block');

/** A chunk as the client knows it: its id (64 lowercase hex digits) and its length in bytes. */
export interface ChunkRef {
  readonly id: string;
  readonly byteLength: number;
}

/** One challenged block: `chunk` indexes Challenge.chunks, `block` is the block index in it. */
export interface ChallengeItem {
  readonly chunk: number;
  readonly block: number;
  /** The coefficient nu, in [1, 2^128). */
  readonly nu: bigint;
}

/** The blocks a client asks the store to prove, with the chunks they are in. */
export interface Challenge {
  readonly chunks: readonly ChunkRef[];
  readonly items: readonly ChallengeItem[];
}

/** The store's answer: mu_1..mu_s and sigma, each in [0, p). */
export interface Proof {
  readonly mu: readonly bigint[];
  readonly sigma: bigint;
}

/** How the prover reads the store: a block's bytes (at most 4096; fewer for a last block) and its 32-byte tag. */
export interface ProofSource {
  readBlock(chunkId: string, index: number): Promise<Buffer>;
  readTag(chunkId: string, index: number): Promise<Buffer>;
}

/** Options of prove(). */
export interface ProveOptions {
  /** Blocks read at once (default 8, also for what is not a positive whole number): overlaps the reads of a store on disk. */
  readonly concurrency?: number;
  /** Stops the proof between blocks. */
  readonly signal?: AbortSignal;
}

const hmac = (algorithm: string, key: Buffer, ...parts: Buffer[]): Buffer => {
  const mac = createHmac(algorithm, key);
  for (const part of parts) mac.update(part);
  return mac.digest();
};

/** 512 bits of HMAC reduced mod p: a uniform element up to a bias below 2^-256. */
const hmacElement = (key: Buffer, ...parts: Buffer[]): bigint => modP(BigInt(`0x${hmac('sha512', key, ...parts).toString('hex')}`));

/**
 * The client's secret key: the PRF key and alpha_1..alpha_s, derived from one 32-byte secret
 * (see the top of this file) so that only the secret is stored. The derived values stay in
 * private fields; what leaves is the PRF value of a block and alpha sums, which is all tagging
 * and verifying need.
 */
export class ProofKey {
  readonly #secret: Buffer;
  readonly #prfKey: Buffer;
  readonly #alphas: readonly bigint[];

  private constructor(secret: Buffer) {
    this.#secret = secret;
    this.#prfKey = hmac('sha256', secret, LABEL_PRF);
    this.#alphas = Object.freeze(
      Array.from({ length: SECTORS_PER_BLOCK }, (_, j) => {
        const index = Buffer.alloc(2);
        index.writeUInt16BE(j);
        return hmacElement(secret, LABEL_ALPHA, index);
      }),
    );
  }

  /** A new key from 32 random bytes. */
  static generate(): ProofKey {
    return new ProofKey(randomBytes(PROOF_KEY_SECRET_BYTES));
  }

  /** The key derived from a secret that toSecret() gave. */
  static fromSecret(secret: Uint8Array): ProofKey {
    if (!(secret instanceof Uint8Array) || secret.length !== PROOF_KEY_SECRET_BYTES)
      throw new NubisError('BACKUP_PROOF_KEY_INVALID', `A proof key secret is ${PROOF_KEY_SECRET_BYTES} bytes, not ${describeValue(secret?.length)}`);
    return new ProofKey(Buffer.from(secret));
  }

  /** The 32 bytes to keep: the whole key derives from them. */
  toSecret(): Buffer {
    return Buffer.from(this.#secret);
  }

  /** f(C, i): the PRF value that masks the tag of block `index` of `chunk`. */
  blockMask(chunk: ChunkRef, index: number): bigint {
    const place = Buffer.alloc(16);
    place.writeBigUInt64BE(BigInt(chunk.byteLength), 0);
    place.writeBigUInt64BE(BigInt(index), 8);
    return hmacElement(this.#prfKey, LABEL_BLOCK, Buffer.from(chunk.id, 'hex'), place);
  }

  /** sum_j alpha_j x_j, not reduced (the caller reduces once, after adding f). */
  alphaSum(x: readonly bigint[]): bigint {
    const alphas = this.#alphas;
    let sum = 0n;
    for (let j = 0; j < SECTORS_PER_BLOCK; j++) sum += alphas[j] * x[j];
    return sum;
  }
}

/**
 * The tags of one chunk, 32 bytes per block in block order, for the store to keep beside it.
 * `chunkId` is the chunk's 64-hex-digit id and `data` its whole content (as stored, encrypted):
 * each tag binds the id, the length and the block index.
 */
export function tagChunk(key: ProofKey, chunkId: string, data: Uint8Array): Buffer {
  if (!(data instanceof Uint8Array))
    throw new NubisError('BACKUP_CHUNK_INVALID', `Chunk ${describeValue(chunkId)}: its data is bytes, not ${describeValue(data)}`);
  const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const chunk = checkChunkRef({ id: chunkId, byteLength: bytes.length }, 'BACKUP_CHUNK_INVALID', 'Chunk');
  const blocks = blockCount(bytes.length);
  const tags = Buffer.alloc(blocks * ELEMENT_BYTES);
  const sectors = new Array<bigint>(SECTORS_PER_BLOCK);
  for (let i = 0; i < blocks; i++) {
    blockSectors(bytes.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES), sectors);
    elementToBytes(modP(key.blockMask(chunk, i) + key.alphaSum(sectors)), tags, i * ELEMENT_BYTES);
  }
  return tags;
}

/** The tag of block `index` in the tags of one chunk (as tagChunk made them). */
export function tagOf(tags: Buffer, index: number): Buffer {
  if (tags.length % ELEMENT_BYTES !== 0)
    throw new NubisError('BACKUP_CHUNK_INVALID', `Tags of a chunk are ${ELEMENT_BYTES} bytes a block; ${tags.length} bytes is not a whole number of tags`);
  const count = tags.length / ELEMENT_BYTES;
  if (!Number.isSafeInteger(index) || index < 0 || index >= count)
    throw new NubisError('BACKUP_CHUNK_INVALID', `Block ${describeValue(index)} has no tag: the chunk has ${count} blocks`);
  return tags.subarray(index * ELEMENT_BYTES, (index + 1) * ELEMENT_BYTES);
}

/**
 * A challenge over `chunks` (each with its byte length, as the client recorded it): `blocks`
 * distinct blocks drawn uniformly from all of their blocks (all of them when there are fewer),
 * each with a fresh random coefficient. Keep it to verify the answer: the verdict needs it.
 */
export function makeChallenge(chunks: readonly ChunkRef[], blocks = DEFAULT_CHALLENGE_BLOCKS): Challenge {
  if (!Number.isSafeInteger(blocks) || blocks < 1 || blocks > MAX_CHALLENGE_BLOCKS)
    throw new NubisError('BACKUP_CHALLENGE_INVALID', `A challenge names 1 to ${MAX_CHALLENGE_BLOCKS} blocks, not ${describeValue(blocks)}`);
  const refs = checkChunkList(chunks);
  const total = refs.reduce((sum, chunk) => sum + blockCount(chunk.byteLength), 0);
  if (total === 0) throw new NubisError('BACKUP_CHALLENGE_INVALID', 'No block to challenge: the chunks listed are all empty');
  const picks = total <= blocks ? Array.from({ length: total }, (_, n) => n) : distinctBelow(total, blocks);
  const coefficients = randomCoefficients(picks.length);
  const chosen: ChunkRef[] = [];
  const items: ChallengeItem[] = [];
  let first = 0; // global index of the first block of refs[at]
  let at = 0;
  picks.forEach((pick, n) => {
    while (pick >= first + blockCount(refs[at].byteLength)) first += blockCount(refs[at++].byteLength);
    if (chosen.at(-1) !== refs[at]) chosen.push(refs[at]);
    items.push({ chunk: chosen.length - 1, block: pick - first, nu: coefficients[n] });
  });
  return { chunks: chosen, items };
}

/**
 * `count` distinct integers drawn uniformly from [0, n), ascending (so the store reads each chunk
 * front to back). Floyd's algorithm: `count` draws, whatever n is.
 */
function distinctBelow(n: number, count: number): number[] {
  const picked = new Set<number>();
  for (let top = n - count; top < n; top++) {
    const draw = randomInt(0, top + 1);
    picked.add(picked.has(draw) ? top : draw);
  }
  return [...picked].sort((a, b) => a - b);
}

/**
 * `count` uniform coefficients in [1, 2^128), from one draw of random bytes (a draw per
 * coefficient took most of makeChallenge's time). A zero one, redrawn, would leave its block unchecked.
 */
function randomCoefficients(count: number): bigint[] {
  const bytes = randomBytes(count * COEFFICIENT_BYTES);
  return Array.from({ length: count }, (_, n) => {
    let nu = bigIntFromBytes(bytes.subarray(n * COEFFICIENT_BYTES, (n + 1) * COEFFICIENT_BYTES));
    while (nu === 0n) nu = bigIntFromBytes(randomBytes(COEFFICIENT_BYTES));
    return nu;
  });
}

/**
 * The store's answer to `challenge`, read through `source`; it needs no secret. Sums are kept
 * unreduced while blocks come in (a product of a 128-bit coefficient and a 248-bit sector, 4096
 * times over, stays below 2^388) and reduced mod p once at the end.
 */
export async function prove(challenge: Challenge, source: ProofSource, options: ProveOptions = {}): Promise<Proof> {
  checkChallenge(challenge);
  const mu = new Array<bigint>(SECTORS_PER_BLOCK).fill(0n);
  let sigma = 0n;
  const sectors = new Array<bigint>(SECTORS_PER_BLOCK);
  let next = 0;
  let failed = false;
  // Workers take items in turn; what follows each read runs without an await, so they never interleave on `sectors`.
  const worker = async (): Promise<void> => {
    while (!failed && next < challenge.items.length) {
      options.signal?.throwIfAborted();
      const item = challenge.items[next++];
      const chunk = challenge.chunks[item.chunk];
      const { block, tag } = await readBlockAndTag(source, chunk.id, item.block);
      blockSectors(block, sectors);
      for (let j = 0; j < SECTORS_PER_BLOCK; j++) mu[j] += item.nu * sectors[j];
      sigma += item.nu * tag;
    }
  };
  const { concurrency = 8 } = options;
  const workers = Math.min(Number.isSafeInteger(concurrency) && concurrency > 0 ? concurrency : 8, challenge.items.length);
  await Promise.all(
    Array.from({ length: workers }, () =>
      worker().catch((error: unknown) => {
        failed = true;
        throw error;
      }),
    ),
  );
  return { mu: mu.map(modP), sigma: modP(sigma) };
}

/** Block `index` of a chunk and its tag, as the prover needs them; BACKUP_PROOF_READ_FAILED when the store cannot give them. */
async function readBlockAndTag(source: ProofSource, chunkId: string, index: number): Promise<{ block: Buffer; tag: bigint }> {
  const where = `block ${index} of chunk ${chunkId}`;
  let block: unknown;
  let tag: unknown;
  try {
    [block, tag] = await Promise.all([source.readBlock(chunkId, index), source.readTag(chunkId, index)]);
  } catch (error) {
    throw new NubisError('BACKUP_PROOF_READ_FAILED', `The store could not read ${where} or its tag: ${messageOf(error)}`, { cause: error });
  }
  if (!Buffer.isBuffer(block) || block.length > BLOCK_BYTES)
    throw new NubisError('BACKUP_PROOF_READ_FAILED', `Block ${index} of chunk ${chunkId} read as ${describeBytes(block)}, not at most ${BLOCK_BYTES} bytes`);
  const value = Buffer.isBuffer(tag) ? elementFromBytes(tag) : undefined;
  if (value === undefined)
    throw new NubisError('BACKUP_PROOF_READ_FAILED', `The tag of ${where} is ${describeBytes(tag)}, not an element of ${ELEMENT_BYTES} bytes below p`);
  return { block, tag: value };
}

/**
 * The client's verdict: true when `proof` answers `challenge` (the one the client made and kept)
 * for data tagged with `key`. A malformed challenge or proof is refused with an error; a proof
 * that is well formed but wrong is false.
 */
export function verify(key: ProofKey, challenge: Challenge, proof: Proof): boolean {
  checkChallenge(challenge);
  checkProof(proof);
  let expected = key.alphaSum(proof.mu);
  for (const item of challenge.items) expected += item.nu * key.blockMask(challenge.chunks[item.chunk], item.block);
  return modP(expected) === proof.sigma;
}

/**
 * Throws BACKUP_CHALLENGE_INVALID unless `challenge` is one makeChallenge could have made: 1 to
 * MAX_CHALLENGE_BLOCKS items, each naming a chunk of the list and a block inside it, no block
 * twice, coefficients in [1, 2^128); valid and distinct chunks, each with a block challenged.
 * Sizes are checked first, so a huge list is refused before it is walked.
 */
export function checkChallenge(challenge: Challenge): void {
  const fail = (message: string): never => {
    throw new NubisError('BACKUP_CHALLENGE_INVALID', message);
  };
  if (typeof challenge !== 'object' || challenge === null || !Array.isArray(challenge.items) || !Array.isArray(challenge.chunks))
    fail('A challenge has a list of chunks and a list of items');
  const { items } = challenge;
  if (items.length < 1 || items.length > MAX_CHALLENGE_BLOCKS) fail(`A challenge names 1 to ${MAX_CHALLENGE_BLOCKS} blocks, not ${items.length}`);
  if (challenge.chunks.length > items.length) fail(`A challenge of ${items.length} blocks lists ${challenge.chunks.length} chunks: more than it challenges`);
  const chunks = checkChunkList(challenge.chunks);
  const seen = new Set<string>();
  const used = new Set<number>();
  items.forEach((item, n) => {
    const where = `Challenge item ${n}`;
    if (typeof item !== 'object' || item === null) fail(`${where} is not an item`);
    const { chunk, block, nu } = item;
    if (!Number.isSafeInteger(chunk) || chunk < 0 || chunk >= chunks.length)
      fail(`${where}: chunk ${describeValue(chunk)} is not among the ${chunks.length} chunks listed`);
    const blocks = blockCount(chunks[chunk].byteLength);
    if (!Number.isSafeInteger(block) || block < 0 || block >= blocks)
      fail(`${where}: block ${describeValue(block)} is outside chunk ${chunks[chunk].id} (${blocks} blocks)`);
    if (typeof nu !== 'bigint' || nu < 1n || nu >= MAX_COEFFICIENT) fail(`${where}: coefficient ${describeValue(nu)} is not in [1, 2^128)`);
    const place = `${chunk}:${block}`;
    if (seen.has(place)) fail(`${where}: block ${block} of chunk ${chunks[chunk].id} is challenged twice`);
    seen.add(place);
    used.add(chunk);
  });
  if (used.size < chunks.length) fail(`Challenge chunk ${chunks.findIndex((_, n) => !used.has(n))} is listed but none of its blocks is challenged`);
}

/** Throws BACKUP_PROOF_MALFORMED unless `proof` has s elements mu and a sigma, each in [0, p). */
export function checkProof(proof: Proof): void {
  const isElement = (x: unknown): boolean => typeof x === 'bigint' && x >= 0n && x < FIELD_PRIME;
  if (typeof proof !== 'object' || proof === null || !Array.isArray(proof.mu) || proof.mu.length !== SECTORS_PER_BLOCK)
    throw new NubisError('BACKUP_PROOF_MALFORMED', `A proof has ${SECTORS_PER_BLOCK} elements mu and a sigma`);
  const bad = proof.mu.findIndex((x) => !isElement(x));
  if (bad >= 0) throw new NubisError('BACKUP_PROOF_MALFORMED', `Proof element mu_${bad} ${describeValue(proof.mu[bad])} is not in [0, p)`);
  if (!isElement(proof.sigma)) throw new NubisError('BACKUP_PROOF_MALFORMED', `Proof element sigma ${describeValue(proof.sigma)} is not in [0, p)`);
}

/** The chunks of a challenge: each valid, no id twice. */
function checkChunkList(chunks: readonly ChunkRef[]): readonly ChunkRef[] {
  if (!Array.isArray(chunks) || chunks.length === 0) throw new NubisError('BACKUP_CHALLENGE_INVALID', 'A challenge lists at least one chunk');
  const ids = new Set<string>();
  chunks.forEach((chunk, n) => {
    checkChunkRef(chunk, 'BACKUP_CHALLENGE_INVALID', `Challenge chunk ${n}`);
    if (ids.has(chunk.id)) throw new NubisError('BACKUP_CHALLENGE_INVALID', `Challenge chunk ${n}: chunk ${chunk.id} is listed twice`);
    ids.add(chunk.id);
  });
  return chunks;
}

/** `chunk` when its id is 64 lowercase hex digits and its length a whole number of bytes up to MAX_CHUNK_BYTES. */
function checkChunkRef(chunk: ChunkRef, code: string, where: string): ChunkRef {
  if (typeof chunk !== 'object' || chunk === null) throw new NubisError(code, `${where} is not a chunk`);
  if (typeof chunk.id !== 'string' || !CHUNK_ID.test(chunk.id))
    throw new NubisError(code, `${where}: id ${describeValue(chunk.id)} is not 64 lowercase hex digits`);
  const { byteLength } = chunk;
  if (!Number.isSafeInteger(byteLength) || byteLength < 0 || byteLength > MAX_CHUNK_BYTES)
    throw new NubisError(code, `${where}: length ${describeValue(byteLength)} is not 0 to ${MAX_CHUNK_BYTES} bytes`);
  return chunk;
}

/** A value as an error message shows it: short, and never a throw (BigInts, cycles, undefined). */
export function describeValue(value: unknown): string {
  let text: string;
  try {
    text = typeof value === 'bigint' || typeof value === 'number' ? String(value) : (JSON.stringify(value) ?? String(value));
  } catch {
    text = typeof value;
  }
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

const describeBytes = (value: unknown): string => (Buffer.isBuffer(value) ? `${value.length} bytes` : describeValue(value));
