/**
 * The JSON forms of a proof-of-retrievability challenge and proof (por.ts): the challenge the
 * client sends to the store, and the proof the store sends back. Parsing takes any value that
 * JSON.parse may give and is strict: anything but the exact shape, lowercase hex, canonical
 * base64 and elements below p is refused with a NubisError naming the offending value
 * (BACKUP_CHALLENGE_INVALID, BACKUP_PROOF_MALFORMED), never a crash.
 *
 *   challenge: { version: 1, chunks: [{ id, byteLength }, ...], items: [[chunk, block, nu], ...] }
 *     chunk indexes `chunks`, block is the block index in that chunk, nu is 32 lowercase hex digits
 *   proof:     { version: 1, proof: base64 of 4288 bytes: mu_1..mu_133 then sigma, 32 big-endian bytes each }
 */
import { NubisError } from '../../core/errors.ts';
import { ELEMENT_BYTES, elementFromBytes, elementToBytes, SECTORS_PER_BLOCK } from './field.ts';
import {
  type Challenge,
  type ChallengeItem,
  type ChunkRef,
  checkChallenge,
  checkProof,
  COEFFICIENT_BYTES,
  describeValue,
  MAX_CHALLENGE_BLOCKS,
  PROOF_BYTES,
  type Proof,
} from './por.ts';

/** The version of both forms; a change to either is a new version. */
export const POR_WIRE_VERSION = 1;

/** A challenge as JSON: items are [chunk index, block index, nu as hex] to keep 460 of them short. */
export interface ChallengeJson {
  version: typeof POR_WIRE_VERSION;
  chunks: { id: string; byteLength: number }[];
  items: [number, number, string][];
}

/** A proof as JSON: its 4288 bytes (proofToBytes) in base64. */
export interface ProofJson {
  version: typeof POR_WIRE_VERSION;
  proof: string;
}

const COEFFICIENT_HEX = new RegExp(`^[0-9a-f]{${COEFFICIENT_BYTES * 2}}$`);
const PROOF_BASE64_CHARS = Math.ceil(PROOF_BYTES / 3) * 4;

/** The JSON form of a challenge (one makeChallenge made, or that passes checkChallenge). */
export function challengeToJson(challenge: Challenge): ChallengeJson {
  checkChallenge(challenge);
  return {
    version: POR_WIRE_VERSION,
    chunks: challenge.chunks.map((chunk) => ({ id: chunk.id, byteLength: chunk.byteLength })),
    items: challenge.items.map((item) => [item.chunk, item.block, item.nu.toString(16).padStart(COEFFICIENT_BYTES * 2, '0')]),
  };
}

/** The challenge a JSON value holds; BACKUP_CHALLENGE_INVALID when it is not exactly one. */
export function challengeFromJson(value: unknown): Challenge {
  const fail = (message: string): never => {
    throw new NubisError('BACKUP_CHALLENGE_INVALID', message);
  };
  const json = exactObject(value, ['version', 'chunks', 'items'], 'A challenge', fail);
  if (json.version !== POR_WIRE_VERSION) fail(`Challenge version ${describeValue(json.version)} is not ${POR_WIRE_VERSION}`);
  const { chunks, items } = json;
  // Sizes before contents: a list of a million entries is refused without walking it.
  if (!Array.isArray(chunks) || chunks.length > MAX_CHALLENGE_BLOCKS) fail(`Challenge chunks must be a list of at most ${MAX_CHALLENGE_BLOCKS} chunks`);
  if (!Array.isArray(items) || items.length > MAX_CHALLENGE_BLOCKS) fail(`Challenge items must be a list of at most ${MAX_CHALLENGE_BLOCKS} items`);
  const chunkRefs = (chunks as unknown[]).map((chunk, n): ChunkRef => {
    const ref = exactObject(chunk, ['id', 'byteLength'], `Challenge chunk ${n}`, fail);
    return { id: ref.id as string, byteLength: ref.byteLength as number };
  });
  const challengeItems = (items as unknown[]).map((item, n): ChallengeItem => {
    if (!Array.isArray(item) || item.length !== 3) return fail(`Challenge item ${n} ${describeValue(item)} is not [chunk, block, nu]`);
    const [chunk, block, nu] = item as unknown[];
    if (typeof nu !== 'string' || !COEFFICIENT_HEX.test(nu))
      fail(`Challenge item ${n}: coefficient ${describeValue(nu)} is not ${COEFFICIENT_BYTES * 2} lowercase hex digits`);
    return { chunk: chunk as number, block: block as number, nu: BigInt(`0x${nu}`) };
  });
  // The rest (indices in range, no block twice, nu != 0, chunk ids) is the one check prove and verify make too.
  const challenge = { chunks: chunkRefs, items: challengeItems };
  checkChallenge(challenge);
  return challenge;
}

/** A proof as its fixed 4288 bytes: mu_1..mu_s then sigma, 32 big-endian bytes each. */
export function proofToBytes(proof: Proof): Buffer {
  checkProof(proof);
  const bytes = Buffer.alloc(PROOF_BYTES);
  [...proof.mu, proof.sigma].forEach((x, j) => {
    elementToBytes(x, bytes, j * ELEMENT_BYTES);
  });
  return bytes;
}

/** The proof in `bytes`; BACKUP_PROOF_MALFORMED unless they are 4288 bytes of elements below p. */
export function proofFromBytes(bytes: Uint8Array): Proof {
  if (!(bytes instanceof Uint8Array) || bytes.length !== PROOF_BYTES)
    throw new NubisError('BACKUP_PROOF_MALFORMED', `A proof is ${PROOF_BYTES} bytes, not ${describeValue(bytes?.length)}`);
  const elements = Array.from({ length: SECTORS_PER_BLOCK + 1 }, (_, j) => {
    const x = elementFromBytes(bytes.subarray(j * ELEMENT_BYTES, (j + 1) * ELEMENT_BYTES));
    if (x === undefined) throw new NubisError('BACKUP_PROOF_MALFORMED', `Proof element ${j < SECTORS_PER_BLOCK ? `mu_${j}` : 'sigma'} is not below p`);
    return x;
  });
  return { mu: elements.slice(0, SECTORS_PER_BLOCK), sigma: elements[SECTORS_PER_BLOCK] };
}

/** The JSON form of a proof. */
export function proofToJson(proof: Proof): ProofJson {
  return { version: POR_WIRE_VERSION, proof: proofToBytes(proof).toString('base64') };
}

/** The proof a JSON value holds; BACKUP_PROOF_MALFORMED when it is not exactly one. */
export function proofFromJson(value: unknown): Proof {
  const fail = (message: string): never => {
    throw new NubisError('BACKUP_PROOF_MALFORMED', message);
  };
  const json = exactObject(value, ['version', 'proof'], 'A proof', fail);
  if (json.version !== POR_WIRE_VERSION) fail(`Proof version ${describeValue(json.version)} is not ${POR_WIRE_VERSION}`);
  const text = json.proof;
  if (typeof text !== 'string' || text.length !== PROOF_BASE64_CHARS) fail(`A proof is ${PROOF_BASE64_CHARS} characters of base64, not ${describeValue(text)}`);
  // Buffer.from skips what is not base64; only text that encodes back to itself is the canonical form.
  const bytes = Buffer.from(text as string, 'base64');
  if (bytes.toString('base64') !== text) fail('A proof is canonical base64 (A-Z, a-z, 0-9, + and /, = padding)');
  return proofFromBytes(bytes);
}

/** `value` as an object with exactly `keys`, or `fail` called with what is wrong. */
function exactObject(value: unknown, keys: readonly string[], what: string, fail: (message: string) => never): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return fail(`${what} is an object, not ${describeValue(value)}`);
  const present = Object.keys(value);
  const unknown = present.find((key) => !keys.includes(key));
  if (unknown !== undefined) fail(`${what} has no field ${describeValue(unknown)}`);
  const missing = keys.find((key) => !present.includes(key));
  if (missing !== undefined) fail(`${what} lacks the field "${missing}"`);
  return value as Record<string, unknown>;
}
