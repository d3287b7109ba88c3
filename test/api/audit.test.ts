/**
 * The audit log as an auditor uses it: entries for allowed and denied requests (who, what,
 * result; never a secret), `verify` catching each kind of tampering and naming it, and inclusion
 * and consistency proofs checked by a verifier written here from RFC 9162 2.1.3.2 and 2.1.4.2
 * (it shares no code with Nubis).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

// --- An independent verifier, from RFC 9162's text. ---
const sha256 = (...parts: Buffer[]): Buffer => createHash('sha256').update(Buffer.concat(parts)).digest();
const leaf = (data: string): Buffer => sha256(Buffer.of(0), Buffer.from(data, 'utf8'));
const node = (l: Buffer, r: Buffer): Buffer => sha256(Buffer.of(1), l, r);

/** RFC 9162 2.1.3.2: verifying an inclusion proof. */
function rfcVerifyInclusion(leafIndex: number, treeSize: number, leafHash: Buffer, path: Buffer[], root: Buffer): boolean {
  if (leafIndex >= treeSize) return false;
  let fn = leafIndex;
  let sn = treeSize - 1;
  let r = leafHash;
  for (const p of path) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = node(p, r);
      if (fn % 2 === 0) while (fn % 2 === 0 && fn !== 0) [fn, sn] = [Math.floor(fn / 2), Math.floor(sn / 2)];
    } else r = node(r, p);
    [fn, sn] = [Math.floor(fn / 2), Math.floor(sn / 2)];
  }
  return sn === 0 && r.equals(root);
}

/** RFC 9162 2.1.4.2: verifying a consistency proof. */
function rfcVerifyConsistency(first: number, second: number, firstHash: Buffer, secondHash: Buffer, proof: Buffer[]): boolean {
  if (proof.length === 0) return false;
  let path = [...proof];
  if ((first & (first - 1)) === 0) path = [firstHash, ...path];
  let fn = first - 1;
  let sn = second - 1;
  while (fn % 2 === 1) [fn, sn] = [Math.floor(fn / 2), Math.floor(sn / 2)];
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      fr = node(c, fr);
      sr = node(c, sr);
      while (fn % 2 === 0 && fn !== 0) [fn, sn] = [Math.floor(fn / 2), Math.floor(sn / 2)];
    } else sr = node(sr, c);
    [fn, sn] = [Math.floor(fn / 2), Math.floor(sn / 2)];
  }
  return fr.equals(firstHash) && sr.equals(secondHash) && sn === 0;
}

// --- A cluster with some history. ---
const folders: string[] = [];
const clusters: FakeCluster[] = [];

/** A fake cluster whose heads are published to a file outside its data folder, with allowed and denied requests logged. */
async function clusterWithHistory(): Promise<{
  cluster: FakeCluster;
  headFile: string;
  call: (m: string, u: string, t?: string, b?: unknown) => Promise<{ status: number; body: Record<string, unknown> }>;
}> {
  const outside = mkdtempSync(join(tmpdir(), `nubis-audit-witness-${process.pid}-`));
  folders.push(outside);
  const headFile = join(outside, 'head.json');
  const cluster = await fakeCluster(['h1'], { auditPublishFile: headFile });
  clusters.push(cluster);
  const app = await cluster.app();
  const call = async (method: string, url: string, token = cluster.token, body?: unknown) => {
    const response = await app.inject({
      method: method as 'GET',
      url,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
    });
    return { status: response.statusCode, body: response.body ? (response.json() as Record<string, unknown>) : {} };
  };
  await call('POST', '/v1/projects', cluster.token, { name: 'web' });
  await call('POST', '/v1/users', cluster.token, { name: 'dave', password: 'dave-secret-password' });
  await call('POST', '/v1/access/grants', cluster.token, { user: 'dave', role: 'reader', project: 'web' });
  const login = await app.inject({
    method: 'POST',
    url: '/v1/auth/login',
    headers: { 'content-type': 'application/json' },
    payload: { user: 'dave', password: 'dave-secret-password' },
  });
  const dave = (login.json() as { secret: string }).secret;
  await call('POST', '/v1/networks', dave, { name: 'n1', subnet: '10.94.0.0/24', project: 'web' });
  await call('POST', '/v1/networks', cluster.token, { name: 'n1', subnet: '10.94.0.0/24', project: 'web' });
  await call('GET', '/v1/vms', 'not-a-token');
  for (let i = 0; i < 6; i += 1) await call('POST', '/v1/secgroups', cluster.token, { name: `g${i}`, project: 'web' });
  await cluster.services.audit.signHead();
  return { cluster, headFile, call };
}

async function verify(call: Awaited<ReturnType<typeof clusterWithHistory>>['call']): Promise<{ ok: boolean; problems: string[]; entries: number }> {
  const report = await call('POST', '/v1/audit/verify');
  assert.equal(report.status, 200, JSON.stringify(report.body));
  return report.body as { ok: boolean; problems: string[]; entries: number };
}

describe('the tamper-evident audit log', () => {
  after(async () => {
    for (const cluster of clusters) await cluster.close();
    for (const folder of folders) rmSync(folder, { recursive: true, force: true });
  });

  it('records allowed and denied requests with who, what and the result, and no secret', async () => {
    const { cluster, call } = await clusterWithHistory();
    const entries = (await call('GET', '/v1/audit?limit=1000')).body as unknown as Array<Record<string, unknown>>;
    const denied = entries.find((e) => e.user === 'dave' && e.route === '/v1/networks' && e.result === 'denied');
    assert.ok(denied, 'the denied network create is logged');
    assert.equal(denied.action, 'network.create');
    assert.equal(denied.project, 'web');
    assert.match(denied.reason as string, /dave lacks permission network\.create on project web/);
    const allowed = entries.find((e) => e.user === 'admin' && e.route === '/v1/networks' && e.result === 'ok');
    assert.ok(allowed, 'the allowed network create is logged');
    assert.equal(allowed.token, 'admin');
    assert.ok(
      entries.find((e) => e.result === 'denied' && e.status === 401 && e.user === undefined),
      'an unknown token is logged',
    );
    const login = entries.find((e) => e.route === '/v1/auth/login');
    assert.ok(login, 'sign-ins are logged');
    const everything = JSON.stringify((await call('GET', '/v1/audit/export')).body);
    for (const secret of ['dave-secret-password', cluster.token]) assert.ok(!everything.includes(secret), 'no secret in the log');
    assert.equal((await verify(call)).ok, true);
  });

  it('proves inclusion and consistency to a verifier written from RFC 9162', async () => {
    const { call } = await clusterWithHistory();
    const heads = (await call('GET', '/v1/audit/heads')).body as unknown as Array<{ treeSize: number; rootHash: string }>;
    const head = heads.at(-1)!;
    const exported = (await call('GET', '/v1/audit/export')).body as { entries: Array<{ seq: number; data: string }> };
    for (const entry of exported.entries.filter((e) => e.seq <= head.treeSize)) {
      const proof = (await call('GET', `/v1/audit/entries/${entry.seq}/proof?treeSize=${head.treeSize}`)).body as { proof: string[]; rootHash: string };
      assert.equal(proof.rootHash, head.rootHash);
      assert.ok(
        rfcVerifyInclusion(
          entry.seq - 1,
          head.treeSize,
          leaf(entry.data),
          proof.proof.map((h) => Buffer.from(h, 'hex')),
          Buffer.from(head.rootHash, 'hex'),
        ),
        `entry ${entry.seq} is in the tree of ${head.treeSize}`,
      );
    }
    for (let from = 1; from < head.treeSize; from += 1) {
      const proof = (await call('GET', `/v1/audit/consistency?from=${from}&to=${head.treeSize}`)).body as { fromRoot: string; toRoot: string; proof: string[] };
      assert.ok(
        rfcVerifyConsistency(
          from,
          head.treeSize,
          Buffer.from(proof.fromRoot, 'hex'),
          Buffer.from(proof.toRoot, 'hex'),
          proof.proof.map((h) => Buffer.from(h, 'hex')),
        ),
        `tree ${head.treeSize} extends tree ${from}`,
      );
    }
    const tampered = (await call('GET', `/v1/audit/entries/3/proof?treeSize=${head.treeSize}`)).body as { proof: string[] };
    assert.ok(
      !rfcVerifyInclusion(
        3,
        head.treeSize,
        leaf(exported.entries[2].data),
        tampered.proof.map((h) => Buffer.from(h, 'hex')),
        Buffer.from(head.rootHash, 'hex'),
      ),
      'a proof for the wrong place fails',
    );
  });

  const tamperCases: Array<{ name: string; expect: RegExp; tamper: (cluster: FakeCluster) => Promise<void> }> = [
    {
      name: 'one byte of an entry flipped',
      expect: /Entry 4 was edited/,
      tamper: async ({ db }) => {
        const row = await db.selectFrom('audit_entries').select('data').where('seq', '=', 4).executeTakeFirstOrThrow();
        await db
          .updateTable('audit_entries')
          .set({ data: row.data.replace('"POST"', '"POSU"') })
          .where('seq', '=', 4)
          .execute();
      },
    },
    {
      name: 'an entry edited together with its leaf hash',
      // The range starts after the last head signed before entry 4 (under load one may follow entry 3).
      expect: /does not match the entries: an entry among [1-4]\.\.\d+ was changed/,
      tamper: async ({ db }) => {
        const row = await db.selectFrom('audit_entries').select('data').where('seq', '=', 4).executeTakeFirstOrThrow();
        const data = row.data.replace('"POST"', '"POSU"');
        await db
          .updateTable('audit_entries')
          .set({ data, leaf_hash: leaf(data).toString('hex') })
          .where('seq', '=', 4)
          .execute();
      },
    },
    {
      name: 'an entry deleted',
      expect: /Entries 5\.\.5 are missing/,
      tamper: async ({ db }) => {
        await db.deleteFrom('audit_entries').where('seq', '=', 5).execute();
      },
    },
    {
      name: 'two entries swapped',
      expect: /Entry 6 holds the content of entry 7/,
      tamper: async ({ db }) => {
        const [a, b] = await db.selectFrom('audit_entries').selectAll().where('seq', 'in', [6, 7]).orderBy('seq').execute();
        await db.updateTable('audit_entries').set({ data: b.data, leaf_hash: b.leaf_hash }).where('seq', '=', 6).execute();
        await db.updateTable('audit_entries').set({ data: a.data, leaf_hash: a.leaf_hash }).where('seq', '=', 7).execute();
      },
    },
    {
      name: 'truncated (the last entries and the heads over them removed)',
      expect: /the log was truncated/,
      tamper: async ({ db }) => {
        await db.deleteFrom('audit_entries').where('seq', '>', 5).execute();
        await db.deleteFrom('audit_heads').where('tree_size', '>', 5).execute();
      },
    },
  ];

  for (const { name, expect, tamper } of tamperCases) {
    it(`catches and names it when ${name}`, async () => {
      const { cluster, call } = await clusterWithHistory();
      assert.equal((await verify(call)).ok, true);
      await tamper(cluster);
      const report = await verify(call);
      assert.equal(report.ok, false);
      assert.ok(
        report.problems.some((p) => expect.test(p)),
        `${expect} in ${JSON.stringify(report.problems)}`,
      );
    });
  }

  it('catches a log replaced by a different valid-looking one, against the head published outside the data folder', async () => {
    const original = await clusterWithHistory();
    const publishedHead = JSON.parse(readFileSync(original.headFile, 'utf8')) as Record<string, unknown>;
    // Another Nubis with its own key and a history of its own: valid in itself.
    const forged = await clusterWithHistory();
    assert.equal((await verify(forged.call)).ok, true);
    const report = (await forged.call('POST', '/v1/audit/verify', forged.cluster.token, { head: publishedHead })).body as { ok: boolean; problems: string[] };
    assert.equal(report.ok, false);
    assert.ok(
      report.problems.some((p) => /the log \(or its key\) was replaced/.test(p)),
      JSON.stringify(report.problems),
    );
  });
});
