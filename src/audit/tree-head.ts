// Signed tree heads of the audit log, in the spirit of RFC 9162 4.10 (signed tree head): the log
// signs its size, its Merkle root and the time, so anyone holding a head can later check that
// the log still contains that tree. Ed25519 (RFC 8032) over a small, fixed text message.
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, randomBytes, sign, verify } from 'node:crypto';
import { link, open, readFile, unlink } from 'node:fs/promises';

/** A signed tree head: the log had `treeSize` entries with Merkle root `rootHash` at `timestamp`. */
export interface TreeHead {
  /** How many entries the tree covers (the first ones, seq 1..treeSize). */
  treeSize: number;
  /** The RFC 9162 2.1.1 Merkle tree hash of those entries, 64 lowercase hex digits. */
  rootHash: string;
  /** When the head was signed, ISO 8601 (`Date.prototype.toISOString`). */
  timestamp: string;
  /** The Ed25519 signature of {@link treeHeadMessage}, base64. */
  signature: string;
}

const MESSAGE_PREFIX = 'nubis-audit-tree-head/1';
const ROOT_HASH = /^[0-9a-f]{64}$/;
// RFC 3339 date-time (a profile of ISO 8601), with a zone, so a head's time means one instant.
const TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
const ED25519_SIGNATURE_BYTES = 64;

/**
 * The exact bytes a tree head's signature covers: the UTF-8 of
 * `nubis-audit-tree-head/1\n${treeSize}\n${rootHash}\n${timestamp}\n`. The first line names the
 * format, so a signature made for anything else can never pass as a tree head. Each field is
 * checked (a whole number, 64 lowercase hex digits, an RFC 3339 time) so no field can carry a
 * newline and two different heads can never share a message; a bad field throws a RangeError.
 */
export function treeHeadMessage(head: Omit<TreeHead, 'signature'>): Buffer {
  const { treeSize, rootHash, timestamp } = head;
  if (!Number.isSafeInteger(treeSize) || treeSize < 0) throw new RangeError(`Tree size ${treeSize} is not a whole number of 0 or more`);
  if (!ROOT_HASH.test(rootHash)) throw new RangeError(`Root hash ${JSON.stringify(rootHash)} is not 64 lowercase hex digits`);
  if (!TIMESTAMP.test(timestamp) || Number.isNaN(Date.parse(timestamp))) {
    throw new RangeError(`Timestamp ${JSON.stringify(timestamp)} is not an ISO 8601 date and time with a zone`);
  }
  return Buffer.from(`${MESSAGE_PREFIX}\n${treeSize}\n${rootHash}\n${timestamp}\n`, 'utf8');
}

/**
 * Signs a tree head with an Ed25519 private key (crypto.sign with a null digest, as Ed25519
 * hashes internally, RFC 8032 5.1.6) and returns it with the base64 signature. Throws a TypeError
 * for a key that is not Ed25519 and a RangeError for a malformed field (see {@link treeHeadMessage}).
 */
export function signTreeHead(privateKey: KeyObject, head: Omit<TreeHead, 'signature'>): TreeHead {
  checkEd25519(privateKey, 'private');
  const { treeSize, rootHash, timestamp } = head;
  const signature = sign(null, treeHeadMessage({ treeSize, rootHash, timestamp }), privateKey).toString('base64');
  return { treeSize, rootHash, timestamp, signature };
}

/**
 * True when `head.signature` is a valid Ed25519 signature by `publicKey` of the head's message.
 * Anything else gives false, never an exception: a malformed field, a signature that is not
 * exactly 64 bytes in canonical base64, or a key that is not Ed25519, as heads come from outside.
 */
export function verifyTreeHead(publicKey: KeyObject, head: TreeHead): boolean {
  if (publicKey.type !== 'public' || publicKey.asymmetricKeyType !== 'ed25519') return false;
  if (typeof head.signature !== 'string' || !BASE64.test(head.signature)) return false;
  const signature = Buffer.from(head.signature, 'base64');
  // Only the canonical encoding, so one signature has one spelling.
  if (signature.length !== ED25519_SIGNATURE_BYTES || signature.toString('base64') !== head.signature) return false;
  let message: Buffer;
  try {
    message = treeHeadMessage(head);
  } catch {
    return false;
  }
  return verify(null, message, publicKey, signature);
}

/**
 * Loads the log's Ed25519 signing key from a PKCS#8 PEM file, creating it first when the file
 * does not exist. A new key is written to a temporary file in the same folder with mode 0600,
 * flushed to disk, then linked into place: a crash leaves either no key file or a whole one, and
 * when two processes race, the second one keeps the first one's key instead of replacing a key
 * that may already have signed heads. `keyId` is the first 16 hex digits of the SHA-256 of the
 * public key's SPKI DER encoding. Throws when the file holds something other than an Ed25519 key.
 */
export async function loadOrCreateSigningKey(path: string): Promise<{ privateKey: KeyObject; publicKey: KeyObject; publicKeyPem: string; keyId: string }> {
  let pem = await readIfPresent(path);
  if (pem === undefined) {
    await createKeyFile(path);
    pem = (await readIfPresent(path)) ?? '';
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(pem);
  } catch (error) {
    throw new Error(`Audit signing key ${path} is not a PEM private key`, { cause: error });
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new Error(`Audit signing key ${path} is a ${privateKey.asymmetricKeyType} key, not ed25519`);
  }
  const publicKey = createPublicKey(privateKey);
  const publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
  const keyId = createHash('sha256')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 16);
  return { privateKey, publicKey, publicKeyPem, keyId };
}

/**
 * Reads an Ed25519 public key from its SPKI PEM text (as the export and `loadOrCreateSigningKey`
 * give it). Throws when the text is not a public key, or is one of another type.
 */
export function publicKeyFromPem(pem: string): KeyObject {
  const key = createPublicKey(pem);
  checkEd25519(key, 'public');
  return key;
}

function checkEd25519(key: KeyObject, type: 'private' | 'public'): void {
  if (key.type !== type || key.asymmetricKeyType !== 'ed25519') {
    throw new TypeError(`Audit tree heads need an ed25519 ${type} key, not a ${key.asymmetricKeyType ?? 'secret'} ${key.type} key`);
  }
}

async function readIfPresent(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

/** Writes a fresh key to `path` unless one appears there first (see loadOrCreateSigningKey). */
async function createKeyFile(path: string): Promise<void> {
  const { privateKey } = generateKeyPairSync('ed25519');
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const temporary = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  const file = await open(temporary, 'wx', 0o600);
  try {
    try {
      await file.writeFile(pem, 'utf8');
      await file.sync();
    } finally {
      await file.close();
    }
    // link, unlike rename, fails when the name exists, so a concurrent creator's key is kept.
    await link(temporary, path).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'EEXIST') throw error;
    });
    await syncFolder(path);
  } finally {
    await unlink(temporary).catch(() => undefined);
  }
}

/** Flushes the folder holding `path`, so the new name survives a crash (a key lost is a log unverifiable). */
async function syncFolder(path: string): Promise<void> {
  const slash = path.lastIndexOf('/');
  const folder = slash === -1 ? '.' : slash === 0 ? '/' : path.slice(0, slash);
  const handle = await open(folder, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
