import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { leafHash, merkleRoot } from './merkle.ts';
import { loadOrCreateSigningKey, signTreeHead, type TreeHead } from './tree-head.ts';

// The standalone verifier a third party runs on an export, driven as they would run it: a
// separate Node process on JSON files. The exports are built with merkle.ts and tree-head.ts.

const SCRIPT = fileURLToPath(new URL('../../scripts/verify-audit-export.mjs', import.meta.url));

interface AuditExport {
  format: string;
  publicKey: string;
  entries: { seq: number; data: string }[];
  heads: TreeHead[];
}

type SigningKey = Awaited<ReturnType<typeof loadOrCreateSigningKey>>;

/** A valid export of `count` entries by `actor`, with a signed head at each of `headSizes`. */
function buildExport(key: SigningKey, count: number, headSizes: number[], actor: string): AuditExport {
  const entries = Array.from({ length: count }, (_, i) => ({
    seq: i + 1,
    data: JSON.stringify({ seq: i + 1, at: new Date(Date.UTC(2025, 2, 1, 12, i)).toISOString(), actor, action: 'vm.start', target: `vm-${i + 1}` }),
  }));
  const leaves = entries.map((entry) => leafHash(entry.data));
  const heads = headSizes.map((treeSize, i) =>
    signTreeHead(key.privateKey, {
      treeSize,
      rootHash: merkleRoot(leaves.slice(0, treeSize)).toString('hex'),
      timestamp: new Date(Date.UTC(2025, 2, 1, 13, i)).toISOString(),
    }),
  );
  return { format: 'nubis-audit-export/1', publicKey: key.publicKeyPem, entries, heads };
}

describe('scripts/verify-audit-export.mjs', () => {
  let folder: string;
  let key: SigningKey;
  let otherKey: SigningKey;
  let original: AuditExport;
  let published: TreeHead & { publicKey: string };
  let runs = 0;

  /** Writes the export (and the published head) to files and runs the script on them. */
  async function verifyExport(exported: unknown, head?: unknown): Promise<{ status: number | null; output: string }> {
    runs += 1;
    const exportPath = join(folder, `export-${runs}.json`);
    await writeFile(exportPath, JSON.stringify(exported, null, 2));
    const args = [SCRIPT, exportPath];
    if (head !== undefined) {
      const headPath = join(folder, `head-${runs}.json`);
      await writeFile(headPath, JSON.stringify(head));
      args.push('--head', headPath);
    }
    const result = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 30_000 });
    return { status: result.status, output: result.stdout + result.stderr };
  }

  /** A deep copy of the original export, to tamper with. */
  const copy = (): AuditExport => structuredClone(original);

  before(async () => {
    folder = await mkdtemp(join(tmpdir(), 'nubis-verify-export-test-'));
    key = await loadOrCreateSigningKey(join(folder, 'key.pem'));
    otherKey = await loadOrCreateSigningKey(join(folder, 'other-key.pem'));
    original = buildExport(key, 20, [3, 8, 13, 20], 'alice');
    published = { ...original.heads[3], publicKey: key.publicKeyPem };
  });
  after(async () => {
    await rm(folder, { recursive: true, force: true });
  });

  it('accepts an untouched export, alone and against the published head', async () => {
    const root = merkleRoot(original.entries.map((entry) => leafHash(entry.data))).toString('hex');
    const alone = await verifyExport(original);
    assert.equal(alone.status, 0, alone.output);
    assert.equal(alone.output, `OK: 20 entries, 4 signed heads, latest root ${root}\n`);
    const checked = await verifyExport(original, published);
    assert.equal(checked.status, 0, checked.output);
    assert.match(checked.output, /^Published head of size 20 matches entries 1\.\.20$/m);
    assert.match(checked.output, /^OK: 20 entries, 4 signed heads/m);
  });

  it('notes entries that no signed head covers yet', async () => {
    const result = await verifyExport({ ...copy(), heads: original.heads.slice(0, 3) });
    assert.equal(result.status, 0, result.output);
    assert.match(result.output, /^Note: entries 14\.\.20 are not yet covered by a signed head$/m);
  });

  it("finds one flipped byte in an entry's data, and narrows it down to the entries after the last good head", async () => {
    const tampered = copy();
    const data = Buffer.from(tampered.entries[9].data, 'utf8');
    data[data.indexOf('alice') + 4] ^= 0x01; // alice -> alicd
    tampered.entries[9].data = data.toString('utf8');
    const result = await verifyExport(tampered);
    assert.equal(result.status, 1, result.output);
    assert.match(result.output, /^head #3 \(size 13, .*\): root hash .* is not the Merkle root of entries 1\.\.13 .*; entries 9\.\.13 were changed/m);
    assert.match(result.output, /^head #4 \(size 20, .*\): root hash .* entries 9\.\.20 were changed/m);
    assert.doesNotMatch(result.output, /head #[12] /);
  });

  it('finds a deleted entry', async () => {
    const tampered = copy();
    tampered.entries.splice(4, 1);
    const result = await verifyExport(tampered);
    assert.equal(result.status, 1, result.output);
    assert.match(result.output, /^entry seq 6: follows seq 4, not 5 \(an entry was removed, added or moved\)$/m);
    assert.match(result.output, /^head #3 \(size 13, .*\): root hash .* entries 4\.\.13 were changed/m);
    assert.match(result.output, /^head #4 \(size 20, .*\): covers 20 entries but the export has only 19: entries were removed$/m);
  });

  it('finds two swapped entries', async () => {
    const tampered = copy();
    [tampered.entries[6], tampered.entries[7]] = [tampered.entries[7], tampered.entries[6]];
    const result = await verifyExport(tampered);
    assert.equal(result.status, 1, result.output);
    assert.match(result.output, /^entry seq 8: follows seq 6, not 7/m);
    assert.match(result.output, /^entry seq 7: follows seq 8, not 9/m);
    assert.match(result.output, /^head #2 \(size 8, .*\): root hash .* entries 4\.\.8 were changed/m);
  });

  it('finds heads whose sizes go backwards', async () => {
    const tampered = copy();
    tampered.heads = [original.heads[0], original.heads[2], original.heads[1]];
    const result = await verifyExport(tampered);
    assert.equal(result.status, 1, result.output);
    assert.match(result.output, /^head #3 \(size 8, .*\): smaller than head #2 of size 13 signed before it$/m);
    assert.match(result.output, /^head #3 \(size 8, .*\): signed before head #2/m);
  });

  it('finds a truncated log only against a head kept elsewhere', async () => {
    const truncated = { ...copy(), entries: original.entries.slice(0, 13), heads: original.heads.slice(0, 3) };
    const alone = await verifyExport(truncated);
    assert.equal(alone.status, 0, `a cut log is self-consistent, which is why a published head is needed: ${alone.output}`);
    const checked = await verifyExport(truncated, published);
    assert.equal(checked.status, 1, checked.output);
    assert.match(checked.output, /^published head \(size 20, .*\): the export has only 13 entries: the log was truncated or replaced$/m);
  });

  it('finds a whole different valid log signed by another key', async () => {
    const replaced = buildExport(otherKey, 25, [10, 25], 'mallory');
    const alone = await verifyExport(replaced);
    assert.equal(alone.status, 0, alone.output);
    const checked = await verifyExport(replaced, published);
    assert.equal(checked.status, 1, checked.output);
    assert.match(checked.output, /^published head \(size 20, .*\): its public key is not the export's: the log was truncated or replaced$/m);
    assert.match(checked.output, /^published head \(size 20, .*\): the export's entries 1\.\.20 have root .*: the log was truncated or replaced$/m);
    const { publicKey: _, ...headWithoutKey } = published;
    const withoutKey = await verifyExport(replaced, headWithoutKey);
    assert.equal(withoutKey.status, 1, withoutKey.output);
    assert.match(withoutKey.output, /^published head \(size 20, .*\): signature does not verify with the export's public key/m);
  });

  it('finds a forged head and refuses to run without an export', async () => {
    const tampered = copy();
    tampered.heads[1] = { ...tampered.heads[1], rootHash: tampered.heads[2].rootHash, treeSize: 13 };
    const forged = await verifyExport(tampered);
    assert.equal(forged.status, 1, forged.output);
    assert.match(forged.output, /^head #2 \(size 13, .*\): signature does not verify with the export's public key$/m);
    const usage = spawnSync(process.execPath, [SCRIPT], { encoding: 'utf8' });
    assert.equal(usage.status, 1);
    assert.match(usage.stdout, /^Usage: /);
  });
});
