/**
 * The tamper-evident audit log: entries are leaves of a Merkle tree (RFC 9162 2.1), and the
 * control plane signs a tree head (size, root, time) with its Ed25519 key every few seconds while
 * entries arrive. Each head is also published outside the data folder (a file or a command the
 * admin chose), because an attacker who holds the data folder can truncate the log or replace it
 * with another one signed by a new key: only a head kept elsewhere catches that.
 */
import { spawn } from 'node:child_process';
import { rename, writeFile } from 'node:fs/promises';
import type { KeyObject } from 'node:crypto';
import { NubisError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import type { Db } from '../state/database.ts';
import { CompactRange, consistencyProof, inclusionProof, leafHash, merkleRoot } from './merkle.ts';
import { loadOrCreateSigningKey, publicKeyFromPem, signTreeHead, type TreeHead, verifyTreeHead } from './tree-head.ts';

/** A head as published: the signed head, the key that signed it and its id. */
export interface PublishedHead extends TreeHead {
  publicKey?: string;
  keyId?: string;
}

type SigningKey = Awaited<ReturnType<typeof loadOrCreateSigningKey>>;

export interface AuditLogOptions {
  keyPath: string;
  /** Where each new head is written (a file outside the data folder, e.g. on another machine's mount). */
  publishFile?: string;
  /** A command that receives each new head as JSON on stdin (e.g. one that sends it to a witness). */
  publishCommand?: string;
  /** How often a head is signed while entries arrive. Default 2000 ms. */
  headIntervalMs?: number;
  logger?: Logger;
}

export interface VerifyReport {
  ok: boolean;
  entries: number;
  heads: number;
  latestHead?: TreeHead;
  /** Checked against a head kept outside the data folder. */
  externalHead?: { treeSize: number; matched: boolean };
  problems: string[];
  /** What the check could not cover (e.g. no external head configured). */
  notes: string[];
}

export class AuditLog {
  readonly #db: Db;
  readonly #options: AuditLogOptions;
  #key: SigningKey | undefined;
  readonly #frontier = new CompactRange();
  #timer: NodeJS.Timeout | undefined;
  #signing: Promise<TreeHead | undefined> = Promise.resolve(undefined);

  constructor(db: Db, options: AuditLogOptions) {
    this.#db = db;
    this.#options = options;
  }

  /** Loads (or makes) the signing key, rebuilds the tree from the stored leaves and starts signing heads. */
  async start(): Promise<void> {
    this.#key = await loadOrCreateSigningKey(this.#options.keyPath);
    for (const row of await this.#db.selectFrom('audit_entries').select('leaf_hash').orderBy('seq').execute())
      this.#frontier.append(Buffer.from(row.leaf_hash, 'hex'));
    this.#timer = setInterval(
      () => void this.signHead().catch((error) => this.#options.logger?.error({ err: error }, 'audit head not signed')),
      this.#options.headIntervalMs ?? 2000,
    );
    this.#timer.unref();
  }

  /** Signs a last head for what was appended, and stops the timer. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.signHead();
  }

  get publicKeyPem(): string {
    return this.#requireKey().publicKeyPem;
  }

  #requireKey(): SigningKey {
    if (!this.#key) throw new NubisError('AUDIT_NOT_STARTED', 'The audit log has not started');
    return this.#key;
  }

  /** Signs a head over every committed entry if there are new ones since the last head; publishes it. */
  signHead(): Promise<TreeHead | undefined> {
    this.#signing = this.#signing.catch(() => undefined).then(() => this.#signNewEntries());
    return this.#signing;
  }

  async #signNewEntries(): Promise<TreeHead | undefined> {
    const key = this.#requireKey();
    const fresh = await this.#db.selectFrom('audit_entries').select(['seq', 'leaf_hash']).where('seq', '>', this.#frontier.size).orderBy('seq').execute();
    if (fresh.length === 0) return undefined;
    for (const row of fresh) this.#frontier.append(Buffer.from(row.leaf_hash, 'hex'));
    const head = signTreeHead(key.privateKey, {
      treeSize: this.#frontier.size,
      rootHash: this.#frontier.root().toString('hex'),
      timestamp: new Date().toISOString(),
    });
    await this.#db
      .insertInto('audit_heads')
      .values({ tree_size: head.treeSize, root_hash: head.rootHash, timestamp: head.timestamp, signature: head.signature })
      .onConflict((oc) => oc.column('tree_size').doNothing())
      .execute();
    await this.#publish({ ...head, publicKey: key.publicKeyPem, keyId: key.keyId });
    return head;
  }

  async #publish(head: PublishedHead): Promise<void> {
    const json = `${JSON.stringify(head, null, 2)}\n`;
    if (this.#options.publishFile) {
      const temporary = `${this.#options.publishFile}.tmp-${process.pid}`;
      await writeFile(temporary, json, { mode: 0o644 });
      await rename(temporary, this.#options.publishFile);
    }
    if (this.#options.publishCommand) {
      // The command is the admin's own configuration (nubis up --audit-publish-command), not a request's.
      const child = spawn('/bin/sh', ['-c', this.#options.publishCommand], { stdio: ['pipe', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-500)));
      child.stdin.end(json);
      const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
      if (code !== 0) this.#options.logger?.warn({ code, stderr }, 'the audit head publish command failed');
    }
  }

  /** The signed heads, oldest first. */
  async heads(): Promise<TreeHead[]> {
    const rows = await this.#db.selectFrom('audit_heads').selectAll().orderBy('tree_size').execute();
    return rows.map((row) => ({ treeSize: row.tree_size, rootHash: row.root_hash, timestamp: row.timestamp, signature: row.signature }));
  }

  async #leafHashes(): Promise<Buffer[]> {
    return (await this.#db.selectFrom('audit_entries').select('data').orderBy('seq').execute()).map((row) => leafHash(row.data));
  }

  /** The inclusion proof of entry `seq` in the tree of `treeSize` entries (default: the latest head's). */
  async inclusionProof(
    seq: number,
    treeSize?: number,
  ): Promise<{ seq: number; leafIndex: number; treeSize: number; leafHash: string; rootHash: string; proof: string[] }> {
    const leaves = await this.#leafHashes();
    const size = treeSize ?? (await this.heads()).at(-1)?.treeSize ?? leaves.length;
    if (seq < 1 || seq > size || size > leaves.length)
      throw new NubisError(
        'AUDIT_OUT_OF_RANGE',
        `Entry ${seq} is not in a tree of ${size} entries (the log has ${leaves.length}); wait for the next signed head or give a larger --tree-size`,
      );
    return {
      seq,
      leafIndex: seq - 1,
      treeSize: size,
      leafHash: leaves[seq - 1].toString('hex'),
      rootHash: merkleRoot(leaves.slice(0, size)).toString('hex'),
      proof: inclusionProof(leaves, seq - 1, size).map((hash) => hash.toString('hex')),
    };
  }

  /** The consistency proof between the trees of `fromSize` and `toSize` entries. */
  async consistencyProof(fromSize: number, toSize: number): Promise<{ fromSize: number; toSize: number; fromRoot: string; toRoot: string; proof: string[] }> {
    const leaves = await this.#leafHashes();
    if (fromSize < 1 || fromSize > toSize || toSize > leaves.length)
      throw new NubisError('AUDIT_OUT_OF_RANGE', `Sizes ${fromSize} and ${toSize} must satisfy 1 <= from <= to <= ${leaves.length}`);
    return {
      fromSize,
      toSize,
      fromRoot: merkleRoot(leaves.slice(0, fromSize)).toString('hex'),
      toRoot: merkleRoot(leaves.slice(0, toSize)).toString('hex'),
      proof: consistencyProof(leaves, fromSize, toSize).map((hash) => hash.toString('hex')),
    };
  }

  /** Everything a third party needs to verify the log offline (docs/AUDIT-VERIFY.md). */
  async export(): Promise<{ format: string; publicKey: string; entries: Array<{ seq: number; data: string }>; heads: TreeHead[] }> {
    const entries = await this.#db.selectFrom('audit_entries').select(['seq', 'data']).orderBy('seq').execute();
    return { format: 'nubis-audit-export/1', publicKey: this.publicKeyPem, entries, heads: await this.heads() };
  }

  /**
   * Recomputes the tree from the stored entries and checks every signed head against it, and
   * against `external` (a head kept outside the data folder) when given. Each problem names the
   * entry or head it is about.
   */
  async verify(external?: PublishedHead): Promise<VerifyReport> {
    const key = this.#requireKey();
    const rows = await this.#db.selectFrom('audit_entries').select(['seq', 'data', 'leaf_hash']).orderBy('seq').execute();
    const heads = await this.heads();
    const problems = checkEntries(rows);
    const leaves = rows.map((row) => leafHash(row.data));
    const range = new CompactRange();
    const rootAt = new Map<number, string>();
    const wanted = new Set([...heads.map((h) => h.treeSize), ...(external ? [external.treeSize] : [])]);
    for (const leaf of leaves) {
      range.append(leaf);
      if (wanted.has(range.size)) rootAt.set(range.size, range.root().toString('hex'));
    }
    let previous = 0;
    for (const head of heads) {
      if (!verifyTreeHead(key.publicKey, head))
        problems.push(`Head of size ${head.treeSize} (signed ${head.timestamp}) has a bad signature: it was not made by this control plane's key`);
      if (head.treeSize > rows.length)
        problems.push(
          `Head of size ${head.treeSize} (signed ${head.timestamp}) covers entries the log no longer has (it has ${rows.length}): the log was truncated`,
        );
      else if (rootAt.get(head.treeSize) !== head.rootHash)
        problems.push(
          `Head of size ${head.treeSize} (signed ${head.timestamp}) does not match the entries: an entry among ${previous + 1}..${head.treeSize} was changed, removed, inserted or moved`,
        );
      previous = head.treeSize;
    }
    const notes: string[] = [];
    let externalResult: VerifyReport['externalHead'];
    if (external) {
      const before = problems.length;
      checkExternal(external, key, rows.length, rootAt.get(external.treeSize), problems);
      externalResult = { treeSize: external.treeSize, matched: problems.length === before };
    } else {
      notes.push(
        'No head kept outside the data folder was checked: a truncated log, or one replaced by another signed with a new key, is only caught against one (configure --audit-publish-file, pass --head)',
      );
    }
    const covered = heads.at(-1)?.treeSize ?? 0;
    if (covered < rows.length) notes.push(`Entries ${covered + 1}..${rows.length} are not covered by a signed head yet (the next one comes within seconds)`);
    return { ok: problems.length === 0, entries: rows.length, heads: heads.length, latestHead: heads.at(-1), externalHead: externalResult, problems, notes };
  }
}

/** Sequence numbers dense from 1, each entry at its own place, each leaf hash matching its entry. */
function checkEntries(rows: Array<{ seq: number; data: string; leaf_hash: string }>): string[] {
  const problems: string[] = [];
  let expected = 1;
  for (const row of rows) {
    if (row.seq !== expected) problems.push(`Entries ${expected}..${row.seq - 1} are missing: the sequence jumps from ${expected - 1} to ${row.seq}`);
    expected = row.seq + 1;
    let inner: number | undefined;
    try {
      inner = (JSON.parse(row.data) as { seq?: number }).seq;
    } catch {
      problems.push(`Entry ${row.seq} is not valid JSON: it was edited`);
      continue;
    }
    if (inner !== row.seq) problems.push(`Entry ${row.seq} holds the content of entry ${inner}: entries were swapped or moved`);
    else if (leafHash(row.data).toString('hex') !== row.leaf_hash) problems.push(`Entry ${row.seq} was edited: its content no longer matches its leaf hash`);
  }
  return problems;
}

function checkExternal(
  external: PublishedHead,
  key: { publicKey: KeyObject; keyId: string },
  entries: number,
  root: string | undefined,
  problems: string[],
): void {
  const signer = external.publicKey ? publicKeyFromPem(external.publicKey) : key.publicKey;
  if (!verifyTreeHead(signer, external)) {
    problems.push(`The external head of size ${external.treeSize} has a bad signature`);
    return;
  }
  if (external.keyId && external.keyId !== key.keyId)
    problems.push(`The external head was signed by key ${external.keyId}, the log by key ${key.keyId}: the log (or its key) was replaced`);
  if (external.treeSize > entries)
    problems.push(
      `The external head (signed ${external.timestamp}) has ${external.treeSize} entries, the log only ${entries}: the log was truncated or replaced`,
    );
  else if (root !== external.rootHash)
    problems.push(`The first ${external.treeSize} entries do not match the external head signed ${external.timestamp}: the log was rewritten or replaced`);
}
