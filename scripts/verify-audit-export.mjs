#!/usr/bin/env node
// Verifies an export of the Nubis audit log offline, on its own: it needs Node 20 or later and
// nothing else, and shares no code with Nubis on purpose, so whoever runs it trusts only this
// file, which they can read. It checks that
//   - the entries run seq 1, 2, ..., n, and each entry's data carries the same seq;
//   - every signed tree head in the export verifies with the export's Ed25519 public key, and its
//     root hash is the Merkle root (RFC 9162 2.1.1) of the first treeSize entries;
//   - the heads' sizes and times never go backwards;
//   - with --head, a head kept outside the log (published, mailed, printed) verifies and the
//     export still holds a tree of that size with that root: otherwise the log was truncated or
//     replaced, which no check inside the export alone can reveal.
// It prints one line per problem and exits 1, or prints "OK: ..." and exits 0.
//
//   node verify-audit-export.mjs export.json [--head published-head.json]
//
// The format is described in docs/AUDIT-VERIFY.md of the Nubis repository.
import { createHash, createPublicKey, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';

const USAGE = 'Usage: node verify-audit-export.mjs EXPORT.json [--head PUBLISHED-HEAD.json]';
const EXPORT_FORMAT = 'nubis-audit-export/1';
const HEAD_MESSAGE_PREFIX = 'nubis-audit-tree-head/1';
const ROOT_HASH = /^[0-9a-f]{64}$/;
const TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

// RFC 9162 2.1.1: a leaf is SHA-256(0x00 || entry bytes), an interior node SHA-256(0x01 || left || right).
function leafHash(text) {
  return createHash('sha256').update(Buffer.of(0x00)).update(text, 'utf8').digest();
}

function nodeHash(left, right) {
  return createHash('sha256').update(Buffer.of(0x01)).update(left).update(right).digest();
}

/**
 * The Merkle roots of the first `size` leaves for each of the `sizes` asked (those within the
 * log), in one pass. It keeps the perfect subtrees of the tree's right frontier, one per bit set
 * in the size; folding them from the right gives exactly the RFC 9162 2.1.1 tree, whose split
 * puts the largest power of two smaller than n on the left.
 */
function rootsAt(leaves, sizes) {
  const subtrees = [];
  const roots = new Map();
  const recordRoot = (size) => {
    if (!sizes.has(size)) return;
    let hash = subtrees.length === 0 ? createHash('sha256').digest() : subtrees[subtrees.length - 1]; // MTH({}) = SHA-256()
    for (let i = subtrees.length - 2; i >= 0; i -= 1) hash = nodeHash(subtrees[i], hash);
    roots.set(size, hash);
  };
  recordRoot(0);
  for (let size = 0; size < leaves.length; size += 1) {
    let node = leaves[size];
    for (let carry = size; carry % 2 === 1; carry = Math.floor(carry / 2)) node = nodeHash(subtrees.pop(), node);
    subtrees.push(node);
    recordRoot(size + 1);
  }
  return roots;
}

/** The exact bytes a tree head's Ed25519 signature covers, or undefined when a field is malformed. */
function headMessage(head) {
  if (head === null || typeof head !== 'object') return undefined;
  const { treeSize, rootHash, timestamp } = head;
  if (!Number.isSafeInteger(treeSize) || treeSize < 0) return undefined;
  if (typeof rootHash !== 'string' || !ROOT_HASH.test(rootHash)) return undefined;
  if (typeof timestamp !== 'string' || !TIMESTAMP.test(timestamp) || Number.isNaN(Date.parse(timestamp))) return undefined;
  return Buffer.from(`${HEAD_MESSAGE_PREFIX}\n${treeSize}\n${rootHash}\n${timestamp}\n`, 'utf8');
}

/** Whether `head` carries a valid Ed25519 signature by `key` (a 64-byte signature in canonical base64). */
function signatureVerifies(key, head) {
  const message = headMessage(head);
  if (message === undefined || typeof head.signature !== 'string' || !BASE64.test(head.signature)) return false;
  const signature = Buffer.from(head.signature, 'base64');
  if (signature.length !== 64 || signature.toString('base64') !== head.signature) return false;
  return verify(null, message, key, signature);
}

/** The Ed25519 public key in `pem`, or a sentence saying why there is none. */
function readPublicKey(pem) {
  try {
    const key = createPublicKey(pem);
    if (key.asymmetricKeyType !== 'ed25519') return { error: `is a ${key.asymmetricKeyType} key, not ed25519` };
    return { key };
  } catch (error) {
    return { error: `is not a PEM public key (${error.message})` };
  }
}

function readJson(path, what) {
  try {
    return { value: JSON.parse(readFileSync(path, 'utf8')) };
  } catch (error) {
    return { error: `Cannot read the ${what} ${path}: ${error.message}` };
  }
}

/** Checks seq 1..n and the seq inside each entry's data; returns the leaf hashes in export order. */
function checkEntries(entries, problems) {
  const leaves = [];
  let previousSeq = 0;
  entries.forEach((entry, index) => {
    const position = index + 1;
    const seq = entry !== null && typeof entry === 'object' ? entry.seq : undefined;
    const name = Number.isSafeInteger(seq) ? `entry seq ${seq}` : `entry at position ${position}`;
    if (!Number.isSafeInteger(seq)) problems.push(`${name}: has no whole-number seq`);
    else if (seq !== previousSeq + 1) {
      problems.push(
        position === 1
          ? `${name}: the log must start at seq 1 (entries 1..${seq - 1} are missing)`
          : `${name}: follows seq ${previousSeq}, not ${previousSeq + 1} (an entry was removed, added or moved)`,
      );
    }
    previousSeq = Number.isSafeInteger(seq) ? seq : previousSeq + 1;
    const data = entry?.data;
    if (typeof data !== 'string') {
      problems.push(`${name}: data is not a string`);
      leaves.push(leafHash(''));
      return;
    }
    leaves.push(leafHash(data));
    let parsed;
    try {
      parsed = JSON.parse(data);
    } catch {
      problems.push(`${name}: data is not JSON`);
      return;
    }
    if (parsed?.seq !== seq) problems.push(`${name}: its data says seq ${JSON.stringify(parsed?.seq)}`);
  });
  return leaves;
}

/** Checks every signed head of the export against the key and the entries; returns how many verified. */
function checkHeads(heads, key, roots, entryCount, problems) {
  const labels = heads.map((head, index) => `head #${index + 1} (size ${head?.treeSize}, signed ${head?.timestamp})`);
  // A head whose signature and root both hold proves entries 1..treeSize are as signed; the
  // largest such size below a failing head narrows down where that head's entries changed.
  const verified = heads.map((head) => key !== undefined && signatureVerifies(key, head) && roots.get(head.treeSize)?.toString('hex') === head.rootHash);
  heads.forEach((head, index) => {
    const label = labels[index];
    if (headMessage(head) === undefined) {
      problems.push(`${label}: malformed (treeSize must be a whole number, rootHash 64 lowercase hex digits, timestamp ISO 8601 with a zone)`);
      return;
    }
    if (key !== undefined && !signatureVerifies(key, head)) problems.push(`${label}: signature does not verify with the export's public key`);
    const root = roots.get(head.treeSize);
    if (root === undefined) problems.push(`${label}: covers ${head.treeSize} entries but the export has only ${entryCount}: entries were removed`);
    else if (root.toString('hex') !== head.rootHash) {
      const below = heads.filter((other, j) => verified[j] && other.treeSize < head.treeSize).map((other) => other.treeSize);
      const from = below.length > 0 ? Math.max(...below) + 1 : 1;
      problems.push(
        `${label}: root hash ${head.rootHash} is not the Merkle root of entries 1..${head.treeSize} (${root.toString('hex')}); entries ${from}..${head.treeSize} were changed, removed, added or moved`,
      );
    }
    const previous = heads[index - 1];
    if (index > 0 && headMessage(previous) !== undefined) {
      if (head.treeSize < previous.treeSize) problems.push(`${label}: smaller than head #${index} of size ${previous.treeSize} signed before it`);
      if (Date.parse(head.timestamp) < Date.parse(previous.timestamp))
        problems.push(`${label}: signed before head #${index} (${previous.timestamp}) that precedes it`);
    }
  });
  return verified.filter(Boolean).length;
}

/** Checks a head kept outside the log: same key, valid signature, and its tree still in the export. */
function checkPublishedHead(head, exportKey, roots, entryCount, problems) {
  const label = `published head (size ${head?.treeSize}, signed ${head?.timestamp})`;
  const truncated = 'the log was truncated or replaced';
  if (headMessage(head) === undefined) {
    problems.push(`${label}: malformed (treeSize must be a whole number, rootHash 64 lowercase hex digits, timestamp ISO 8601 with a zone)`);
    return;
  }
  let key = exportKey;
  let whose = "the export's public key";
  if (head.publicKey !== undefined) {
    const own = readPublicKey(head.publicKey);
    if (own.key === undefined) {
      problems.push(`${label}: its publicKey ${own.error}`);
      return;
    }
    key = own.key;
    whose = 'its own public key';
    const der = (k) => k.export({ type: 'spki', format: 'der' });
    if (exportKey === undefined || !der(own.key).equals(der(exportKey))) {
      problems.push(`${label}: its public key is not the export's: ${truncated}`);
    }
  }
  if (key === undefined) return;
  if (!signatureVerifies(key, head)) {
    problems.push(`${label}: signature does not verify with ${whose}: the head is forged or belongs to another log`);
    return;
  }
  const root = roots.get(head.treeSize);
  if (root === undefined) problems.push(`${label}: the export has only ${entryCount} entries: ${truncated}`);
  else if (root.toString('hex') !== head.rootHash) {
    problems.push(`${label}: the export's entries 1..${head.treeSize} have root ${root.toString('hex')}, not ${head.rootHash}: ${truncated}`);
  }
}

function main(argv) {
  const headAt = argv.indexOf('--head');
  const headPath = headAt === -1 ? undefined : argv[headAt + 1];
  const rest = argv.filter((_, i) => headAt === -1 || (i !== headAt && i !== headAt + 1));
  if (rest.length !== 1 || (headAt !== -1 && headPath === undefined)) return { lines: [USAGE], ok: false };

  const exported = readJson(rest[0], 'export');
  if (exported.error !== undefined) return { lines: [exported.error], ok: false };
  const published = headPath === undefined ? undefined : readJson(headPath, 'published head');
  if (published?.error !== undefined) return { lines: [published.error], ok: false };

  const { format, publicKey, entries, heads } = exported.value ?? {};
  const problems = [];
  if (format !== EXPORT_FORMAT) problems.push(`export: format is ${JSON.stringify(format)}, not ${EXPORT_FORMAT}`);
  if (!Array.isArray(entries) || !Array.isArray(heads)) return { lines: [...problems, 'export: entries and heads must be arrays'], ok: false };
  const exportKey = readPublicKey(publicKey);
  if (exportKey.key === undefined) problems.push(`export: publicKey ${exportKey.error}`);

  const leaves = checkEntries(entries, problems);
  const roots = rootsAt(leaves, new Set([entries.length, ...[...heads, published?.value].map((head) => head?.treeSize)]));
  const verifiedHeads = checkHeads(heads, exportKey.key, roots, entries.length, problems);
  if (heads.length === 0 && entries.length > 0) problems.push('export: no signed head, so nothing vouches for any entry');
  if (published !== undefined) checkPublishedHead(published.value, exportKey.key, roots, entries.length, problems);
  if (problems.length > 0) return { lines: problems, ok: false };

  const lines = [];
  const signedSize = Math.max(0, ...heads.map((head) => head.treeSize));
  if (signedSize < entries.length) lines.push(`Note: entries ${signedSize + 1}..${entries.length} are not yet covered by a signed head`);
  if (published !== undefined) lines.push(`Published head of size ${published.value.treeSize} matches entries 1..${published.value.treeSize}`);
  lines.push(`OK: ${entries.length} entries, ${verifiedHeads} signed heads, latest root ${roots.get(entries.length).toString('hex')}`);
  return { lines, ok: true };
}

const { lines, ok } = main(process.argv.slice(2));
for (const line of lines) console.log(line);
process.exitCode = ok ? 0 : 1;
