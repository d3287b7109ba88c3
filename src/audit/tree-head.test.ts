import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { leafHash, merkleRoot } from './merkle.ts';
import { loadOrCreateSigningKey, publicKeyFromPem, signTreeHead, type TreeHead, treeHeadMessage, verifyTreeHead } from './tree-head.ts';

const ROOT = merkleRoot([leafHash('{"seq":1}'), leafHash('{"seq":2}'), leafHash('{"seq":3}')]).toString('hex');
const UNSIGNED = { treeSize: 3, rootHash: ROOT, timestamp: '2025-03-01T12:00:00.000Z' };

describe('treeHeadMessage', () => {
  it('is the UTF-8 of the format line, size, root and time, each ending in a newline', () => {
    assert.equal(treeHeadMessage(UNSIGNED).toString('utf8'), `nubis-audit-tree-head/1\n3\n${ROOT}\n2025-03-01T12:00:00.000Z\n`);
  });

  it('refuses fields that could make two heads share a message, naming the value', () => {
    assert.throws(() => treeHeadMessage({ ...UNSIGNED, treeSize: -1 }), { name: 'RangeError', message: /Tree size -1/ });
    assert.throws(() => treeHeadMessage({ ...UNSIGNED, treeSize: 2.5 }), { name: 'RangeError', message: /Tree size 2.5/ });
    assert.throws(() => treeHeadMessage({ ...UNSIGNED, rootHash: ROOT.toUpperCase() }), { name: 'RangeError', message: /Root hash/ });
    assert.throws(() => treeHeadMessage({ ...UNSIGNED, timestamp: '2025-03-01T12:00:00Z\n4' }), { name: 'RangeError', message: /Timestamp/ });
    assert.throws(() => treeHeadMessage({ ...UNSIGNED, timestamp: '2025-03-01 12:00' }), { name: 'RangeError', message: /Timestamp "2025-03-01 12:00"/ });
  });
});

describe('signTreeHead and verifyTreeHead', () => {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const head = signTreeHead(privateKey, UNSIGNED);

  it('signs a head that verifies with the matching public key', () => {
    assert.deepEqual({ ...head, signature: undefined }, { ...UNSIGNED, signature: undefined });
    assert.equal(Buffer.from(head.signature, 'base64').length, 64);
    assert.equal(verifyTreeHead(publicKey, head), true);
  });

  it('fails when the size, the root or the time changed', () => {
    const otherRoot = merkleRoot([leafHash('{"seq":1}')]).toString('hex');
    const changed: TreeHead[] = [
      { ...head, treeSize: 2 },
      { ...head, rootHash: otherRoot },
      { ...head, timestamp: '2025-03-01T12:00:01.000Z' },
    ];
    for (const bad of changed) assert.equal(verifyTreeHead(publicKey, bad), false, JSON.stringify(bad));
  });

  it('fails with a different key, a flipped signature bit or a signature in another spelling', () => {
    assert.equal(verifyTreeHead(generateKeyPairSync('ed25519').publicKey, head), false);
    const signature = Buffer.from(head.signature, 'base64');
    signature[10] ^= 0x01;
    assert.equal(verifyTreeHead(publicKey, { ...head, signature: signature.toString('base64') }), false);
    assert.equal(verifyTreeHead(publicKey, { ...head, signature: head.signature.replace(/=+$/, '') }), false);
    assert.equal(verifyTreeHead(publicKey, { ...head, signature: 'not base64!' }), false);
    assert.equal(verifyTreeHead(publicKey, { ...head, rootHash: 'zz' }), false);
  });

  it('refuses keys that are not Ed25519', () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
    assert.throws(() => signTreeHead(rsa.privateKey, UNSIGNED), { name: 'TypeError', message: /ed25519 private key, not a rsa/ });
    assert.equal(verifyTreeHead(rsa.publicKey, head), false);
    assert.throws(() => publicKeyFromPem(rsa.publicKey.export({ type: 'spki', format: 'pem' }).toString()), { name: 'TypeError' });
  });
});

describe('loadOrCreateSigningKey', () => {
  let folder: string;
  before(async () => {
    folder = await mkdtemp(join(tmpdir(), 'nubis-tree-head-test-'));
  });
  after(async () => {
    await rm(folder, { recursive: true, force: true });
  });

  it('creates a PKCS#8 key file of mode 0600 that loads back to the same key and keyId', async () => {
    const path = join(folder, 'audit-signing-key.pem');
    const created = await loadOrCreateSigningKey(path);
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    assert.match(await readFile(path, 'utf8'), /^-----BEGIN PRIVATE KEY-----\n/);
    assert.match(created.keyId, /^[0-9a-f]{16}$/);
    assert.deepEqual(await readdir(folder), ['audit-signing-key.pem'], 'no temporary file left behind');

    const loaded = await loadOrCreateSigningKey(path);
    assert.equal(loaded.keyId, created.keyId);
    assert.equal(loaded.publicKeyPem, created.publicKeyPem);
    const head = signTreeHead(loaded.privateKey, UNSIGNED);
    assert.equal(verifyTreeHead(created.publicKey, head), true);
    assert.equal(verifyTreeHead(publicKeyFromPem(created.publicKeyPem), head), true);
  });

  it('keeps one key when two callers create it at once', async () => {
    const path = join(folder, 'raced-key.pem');
    const [first, second] = await Promise.all([loadOrCreateSigningKey(path), loadOrCreateSigningKey(path)]);
    assert.equal(first.keyId, second.keyId);
  });

  it('refuses a file that holds another kind of key, naming the file', async () => {
    const path = join(folder, 'rsa-key.pem');
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
    await writeFile(path, rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    await assert.rejects(loadOrCreateSigningKey(path), { message: /rsa-key\.pem is a rsa key, not ed25519/ });
  });
});
