/**
 * An encrypted keyword index of a backup's file catalog that a server can search without
 * learning the words or the file names: the basic scheme Pi_bas of Cash, Jaeger, Jarecki, Jutla,
 * Krawczyk, Rosu and Steiner, "Dynamic Searchable Encryption in Very-Large Databases: Data
 * Structures and Implementation" (NDSS 2014).
 *
 * Building (client, with the 32-byte key K): for each keyword w, K1 = F(K, '1' || w) and
 * K2 = F(K, '2' || w), with F = HMAC-SHA256 and w its UTF-8 after normalizeKeyword (keywords.ts;
 * bytes of a file name that were not UTF-8 count as those bytes, file-name.ts).
 * The c-th document of w (c = 0, 1, ... in the order the documents were given) becomes one entry:
 * label = F(K1, c) cut to 16 bytes (c as 8 bytes big-endian), value = Enc(K2, document id). The
 * entries are stored sorted by label, an order that says nothing since labels are pseudorandom.
 *
 * Enc is AES-256-GCM keyed with K2 (32 bytes, HMAC-SHA256's output), with a random 96-bit nonce
 * per value: nonce || ciphertext || tag. Nonces are random, not the counter c, so rebuilding an
 * index with the same key and another document order never reuses a (key, nonce) pair. The
 * plaintext is the id's length (4 bytes big-endian), the id, and zeros up to a multiple of 32
 * bytes, so a value tells the id's length only to within 32 bytes.
 *
 * Searching: the client derives (K1, K2) for a word ({@link searchToken}) and sends the server
 * K1 only; the server ({@link searchIndex}) computes the labels F(K1, 0), F(K1, 1), ... until one
 * is missing and answers their values; the client opens them with K2 ({@link openResults}).
 * Pi_bas as published sends both keys and lets the server decrypt the ids; keeping K2 on the
 * client means the server never sees a document id in the clear, even of the files a search
 * found. K1 alone lets the server find that word's entries again (in this and any index built
 * with the same key), nothing more.
 *
 * What the server learns (the scheme's leakage):
 * - from the index alone: the number of entries, which is the number of (keyword, file) pairs
 *   of the catalog, and each value's length to within 32 bytes; nothing else: not the words,
 *   not the file names, not how entries group into words or into files;
 * - from two indexes built with the same key: the labels of the words they share are the same,
 *   so their overlap shows; give each index its own key (e.g. derived per backup) where it may not;
 * - from each search: the search pattern (the same word gives the same K1, so repeated searches
 *   are recognisable), the access pattern (which entries matched) and the result size (how many
 *   files have the word; results are not padded).
 * It does not learn the word searched, nor the ids of the files found: each (word, file) pair has
 * its own entry, encrypted under the word's K2 with a fresh nonce, so not even whether two
 * searches found the same file.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { NubisError } from '../../core/errors.ts';
import { decodeFileName, fileNameBytes } from './file-name.ts';
import { normalizeKeyword } from './keywords.ts';

/** The `format` of a serialized index: change it with any change to the scheme or its encodings. */
export const INDEX_FORMAT = 'nubis-sse-pibas-v1';
const KEY_BYTES = 32;
const LABEL_BYTES = 16;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** Plaintexts are padded to a multiple of this, so a value's length hides the id's exact length. */
const PADDING_BYTES = 32;

/** One file for the index: an id the caller chooses (e.g. which disk and the path) and its keywords. */
export interface IndexDocument {
  id: string;
  keywords: readonly string[];
}

/** The JSON form of an index: labels in base64url (no padding), values in base64. */
export interface SerializedIndex {
  format: string;
  entries: Array<[string, string]>;
}

/** What {@link searchToken} derives for a word: k1 goes to the server, k2 stays with the client. Both base64url. */
export interface SearchToken {
  k1: string;
  k2: string;
}

/** An encrypted index: labels to encrypted document ids. Holds no key; the server keeps and searches it. */
export class EncryptedIndex {
  readonly #values: ReadonlyMap<string, string>;

  /** From label -> value pairs already checked (buildIndex, fromJSON). */
  constructor(entries: Iterable<[string, string]>) {
    this.#values = new Map(entries);
  }

  /** The number of entries: the (keyword, document) pairs of the catalog. */
  get size(): number {
    return this.#values.size;
  }

  /** The value stored under `label`, if any. */
  valueAt(label: string): string | undefined {
    return this.#values.get(label);
  }

  /** The JSON-safe form, entries sorted by label. */
  toJSON(): SerializedIndex {
    return { format: INDEX_FORMAT, entries: [...this.#values].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)) };
  }

  /** Reads a serialized index, after checking its format and every entry's shape. */
  static fromJSON(json: unknown): EncryptedIndex {
    const invalid = (why: string) => new NubisError('BACKUP_INDEX_INVALID', `Not a search index of format ${INDEX_FORMAT}: ${why}`);
    const serialized = json as Partial<SerializedIndex> | null;
    if (typeof serialized !== 'object' || serialized === null || serialized.format !== INDEX_FORMAT)
      throw invalid(`format is ${JSON.stringify(serialized?.format)}`);
    if (!Array.isArray(serialized.entries)) throw invalid('entries is not an array');
    const labels = new Set<string>();
    for (const [index, entry] of serialized.entries.entries()) {
      const [label, value] = Array.isArray(entry) ? entry : [];
      if (!isBase64Url(label, LABEL_BYTES) || labels.has(label)) throw invalid(`entry ${index} has a malformed or repeated label`);
      if (!isValue(value)) throw invalid(`entry ${index} has a malformed value`);
      labels.add(label);
    }
    return new EncryptedIndex(serialized.entries);
  }
}

/**
 * Builds the encrypted index of `documents` under `key` (32 bytes, e.g. from crypto.randomBytes;
 * whoever holds it can search and read the index). Keywords are normalized (keywords.ts), and a
 * keyword given twice for one document counts once.
 */
export function buildIndex(key: Buffer, documents: readonly IndexDocument[]): EncryptedIndex {
  checkKey(key);
  const documentsOf = new Map<string, string[]>();
  for (const document of documents) {
    for (const keyword of new Set(document.keywords.map(normalizeKeyword))) {
      const ids = documentsOf.get(keyword) ?? [];
      ids.push(document.id);
      documentsOf.set(keyword, ids);
    }
  }
  const entries: Array<[string, string]> = [];
  // All nonces drawn at once: one randomBytes call per value cost a sixth of the build.
  const nonces = randomBytes(NONCE_BYTES * [...documentsOf.values()].reduce((sum, ids) => sum + ids.length, 0));
  for (const [keyword, ids] of documentsOf) {
    const { k1, k2 } = wordKeys(key, keyword);
    for (const [counter, id] of ids.entries()) {
      const nonce = nonces.subarray(entries.length * NONCE_BYTES, (entries.length + 1) * NONCE_BYTES);
      entries.push([label(k1, counter), encryptId(k2, nonce, id)]);
    }
  }
  return new EncryptedIndex(entries);
}

/** The keys of one word: `k1` is the token to send to the server, `k2` opens the results and stays here. */
export function searchToken(key: Buffer, word: string): SearchToken {
  checkKey(key);
  const { k1, k2 } = wordKeys(key, normalizeKeyword(word));
  return { k1: k1.toString('base64url'), k2: k2.toString('base64url') };
}

/**
 * The server's half of a search: the encrypted ids stored under the labels that `k1` (a
 * {@link searchToken}'s k1) derives, in counter order. Needs no key; a token of a word that is
 * not in the index, or made with another key, finds nothing.
 */
export function searchIndex(index: EncryptedIndex, k1: string): string[] {
  if (!isBase64Url(k1, KEY_BYTES)) throw new NubisError('BACKUP_SEARCH_TOKEN_INVALID', 'A search token is 32 bytes in base64url (the k1 of searchToken)');
  const key = Buffer.from(k1, 'base64url');
  const values: string[] = [];
  // Counters are consecutive from 0, so the first missing label ends the word's entries.
  for (let counter = 0; counter < index.size; counter++) {
    const value = index.valueAt(label(key, counter));
    if (value === undefined) break;
    values.push(value);
  }
  return values;
}

/**
 * The client's half: the document ids in the `values` that {@link searchIndex} answered for
 * `word`. Rejects with BACKUP_RESULTS_UNREADABLE when a value does not open (another key, another
 * word, or a value changed on the server): GCM's tag makes sure no wrong id is ever returned.
 */
export function openResults(key: Buffer, word: string, values: readonly string[]): string[] {
  checkKey(key);
  const { k2 } = wordKeys(key, normalizeKeyword(word));
  return values.map((value, index) => {
    const bytes = isValue(value) ? Buffer.from(value, 'base64') : undefined;
    const plaintext = bytes && decrypt(k2, bytes);
    const length = plaintext && plaintext.length >= 4 ? plaintext.readUInt32BE(0) : -1;
    if (!plaintext || length < 0 || 4 + length > plaintext.length)
      throw new NubisError(
        'BACKUP_RESULTS_UNREADABLE',
        `Search result ${index} does not open with this key and word (another key, or an index built with another one)`,
      );
    return decodeFileName(plaintext.subarray(4, 4 + length));
  });
}

function checkKey(key: Buffer): void {
  if (!Buffer.isBuffer(key) || key.length !== KEY_BYTES)
    throw new NubisError('BACKUP_SEARCH_KEY_INVALID', `A search index key is ${KEY_BYTES} bytes, not ${key?.length}`);
}

/** The PRF F: HMAC-SHA256. */
function prf(key: Buffer, data: Buffer): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

/** K1 and K2 of a normalized word; its bytes as file-name.ts gives them, so names that are not UTF-8 stay distinct. */
function wordKeys(key: Buffer, word: string): { k1: Buffer; k2: Buffer } {
  const bytes = fileNameBytes(word);
  return { k1: prf(key, Buffer.concat([Buffer.from('1'), bytes])), k2: prf(key, Buffer.concat([Buffer.from('2'), bytes])) };
}

/** The label of a word's `counter`-th entry, base64url. */
function label(k1: Buffer, counter: number): string {
  const counterBytes = Buffer.alloc(8);
  counterBytes.writeBigUInt64BE(BigInt(counter));
  return prf(k1, counterBytes).subarray(0, LABEL_BYTES).toString('base64url');
}

/** Enc(K2, id): the padded id under AES-256-GCM with a fresh random `nonce`, as nonce || ciphertext || tag in base64. */
function encryptId(k2: Buffer, nonce: Buffer, id: string): string {
  const idBytes = fileNameBytes(id);
  const plaintext = Buffer.alloc(Math.ceil((4 + idBytes.length) / PADDING_BYTES) * PADDING_BYTES);
  plaintext.writeUInt32BE(idBytes.length, 0);
  idBytes.copy(plaintext, 4);
  const cipher = createCipheriv('aes-256-gcm', k2, nonce);
  const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([nonce, ciphertext, cipher.getAuthTag()]).toString('base64');
}

/** The plaintext of a value, or undefined when its tag does not check under `k2`. */
function decrypt(k2: Buffer, bytes: Buffer): Buffer | undefined {
  const decipher = createDecipheriv('aes-256-gcm', k2, bytes.subarray(0, NONCE_BYTES));
  decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES));
  try {
    return Buffer.concat([decipher.update(bytes.subarray(NONCE_BYTES, bytes.length - TAG_BYTES)), decipher.final()]);
  } catch {
    return undefined;
  }
}

function isBase64Url(text: unknown, bytes: number): text is string {
  return typeof text === 'string' && text.length === Math.ceil((bytes * 4) / 3) && /^[A-Za-z0-9_-]+$/.test(text);
}

/** A value's shape: base64 of nonce, a whole number of padded blocks, and tag. */
function isValue(text: unknown): text is string {
  if (typeof text !== 'string' || !/^[A-Za-z0-9+/]+={0,2}$/.test(text) || text.length % 4 !== 0) return false;
  const length = Buffer.byteLength(text, 'base64');
  return length > NONCE_BYTES + TAG_BYTES && (length - NONCE_BYTES - TAG_BYTES) % PADDING_BYTES === 0;
}
