/**
 * Backups of a real VM (the tiny guest with two dir-pool volumes: raw data as vda, an ext4
 * filesystem as vdb) into the backup store: a full backup, then an incremental one that sends only
 * the changed chunk; search of the encrypted file catalogs against a plaintext reference;
 * proofs of retrievability; restores as new VMs whose disks have the checksums of their backup
 * point; a backup taken while the guest writes is of one instant; the store's files and all it
 * received hold no plaintext; a damaged chunk is found by verify and challenge and stops a restore
 * with nothing left behind; bad input is refused with nothing changed; a stopped VM is backed up
 * too; deleted backups' chunks are collected; a store killed before it commits leaves no
 * half-made backup. One VM for the whole file (and the restored ones).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import { tmpdir } from 'node:os';
import { connect, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Backup, BackupAudit, BackupSearchHit, RestoredFile } from '../../src/wire/backup-schemas.ts';
import { fileKeywords } from '../../src/backup/search/keywords.ts';
import type { Vm } from '../../src/wire/schemas.ts';
import { type CliResult, NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';
import type { FaultPoint } from '../../src/core/fault-points.ts';
import { makeTinyBootDisk } from '../helpers/tiny-boot-disk.ts';

const MiB = 1024 * 1024;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Waits (polling a local condition, up to 2 minutes) for `condition`. */
async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 120_000;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`Waited 2 minutes for ${what}`);
    await delay(100);
  }
}
/** The files of the second volume's filesystem: their names are what `backup search` finds. */
const DOCUMENTS: Record<string, string> = {
  'finance/quarterly-report-2026.pdf': 'q',
  'finance/old/quarterly-report-2025.pdf': 'q',
  'finance/budget.ods': 'b',
  'readme.txt': 'r',
};

describe('backups of a VM into the backup store', () => {
  const nubis = new NubisInstance('backups');
  const markerA = `alpha-${randomBytes(6).toString('hex')}`;
  const markerB = `bravo-${randomBytes(6).toString('hex')}`;
  const backups: Backup[] = [];
  const sums: string[] = [];
  /** Chunks of the second volume's filesystem (sent by the first backup, shared by the others). */
  let docsChunks = 0;
  /** Every byte the backup store received and sent, recorded by a relay in front of its socket. */
  const traffic: Buffer[] = [];
  let relay: Server | undefined;

  /** Puts a recording relay in front of the store's socket: its clients connect to the relay unknowingly. */
  async function recordStoreTraffic(): Promise<void> {
    const socket = join(nubis.dataDir, 'backups', 'store.sock');
    renameSync(socket, `${socket}.real`);
    relay = createServer((client) => {
      const store = connect(`${socket}.real`);
      client.on('data', (bytes: Buffer) => traffic.push(Buffer.from(bytes)));
      store.on('data', (bytes: Buffer) => traffic.push(Buffer.from(bytes)));
      client.pipe(store).pipe(client);
      client.on('error', () => store.destroy());
      store.on('error', () => client.destroy());
    });
    await new Promise<void>((resolve) => relay!.listen(socket, resolve));
  }

  before(async () => {
    await nubis.up();
    await recordStoreTraffic();
    for (const args of [
      ['pool', 'create', 'local', '--kind', 'dir'],
      ['volume', 'create', 'data', '--pool', 'local', '--size', '64M', '--host', 'host-1'],
      ['volume', 'create', 'docs', '--pool', 'local', '--size', '16M', '--host', 'host-1'],
    ]) {
      const done = await nubis.cli(args);
      assert.equal(done.code, 0, `${args.join(' ')}: ${done.stderr}`);
    }
    fillWithFilesystem(execFileSync('find', [nubis.dataDir, '-name', 'docs.qcow2'], { encoding: 'utf8' }).trim());
    const created = await nubis.cli(['vm', 'create', 'keeper', '--image', 'tiny', '--memory', '128', '--disk', 'local/data', '--disk', 'local/docs']);
    assert.equal(created.code, 0, created.stderr);
  });

  /** Makes the volume file at `path` an ext4 filesystem holding a few named files (made on the host, offline). */
  function fillWithFilesystem(path: string): void {
    const folder = mkdtempSync(join(tmpdir(), 'nubis-docs-'));
    try {
      mkdirSync(join(folder, 'finance', 'old'), { recursive: true });
      for (const [name, text] of Object.entries(DOCUMENTS)) writeFileSync(join(folder, name), text);
      execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', folder, `${folder}.raw`, '16M']);
      execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', `${folder}.raw`, path]);
    } finally {
      rmSync(`${folder}.raw`, { force: true });
      rmSync(folder, { recursive: true, force: true });
    }
  }
  after(async () => {
    relay?.close();
    await nubis.destroy();
  });

  async function untilReady(vm: string): Promise<void> {
    const deadline = Date.now() + 180_000;
    while (!(await nubis.cliJson<Vm>(['vm', 'show', vm])).ready) {
      if (Date.now() > deadline) assert.fail(`${vm} not ready within 3 minutes`);
      await delay(500);
    }
  }

  /** Writes `text` at the start of the guest's disk, on the device. */
  async function writeMarker(vm: string, text: string): Promise<void> {
    await runOnConsole(nubis, vm, `printf '%s\\n' ${text} | dd of=/dev/vda conv=fsync 2>/dev/null; echo written`);
  }

  /** The first line of the guest's disk and the SHA-256 of the whole disk, read past its page cache. */
  async function readDisk(vm: string): Promise<{ first: string; sha256: string }> {
    const output = await runOnConsole(
      nubis,
      vm,
      `echo 3 > /proc/sys/vm/drop_caches; echo "disk=[$(head -n 1 /dev/vda)] sum=[$(sha256sum /dev/vda | cut -d' ' -f1)]"`,
      { timeoutMs: 120_000 },
    );
    const match = /disk=\[([a-z0-9-]*)\] sum=\[([0-9a-f]{64})\]/.exec(output);
    assert.ok(match, `the disk's first line and sum in ${JSON.stringify(output.slice(-300))}`);
    return { first: match[1], sha256: match[2] };
  }

  it('takes a full backup of the running VM, then an incremental one that sends only the changed chunk', async () => {
    // 12 MiB of data the guest cannot compress away, in chunks 1-3, and a marker in chunk 0.
    await runOnConsole(nubis, 'keeper', 'dd if=/dev/urandom of=/dev/vda bs=1M count=12 seek=4 conv=fsync 2>/dev/null; echo filled', { timeoutMs: 60_000 });
    await writeMarker('keeper', markerA);
    sums.push((await readDisk('keeper')).sha256);
    const full = await nubis.cliJson<Backup>(['backup', 'create', 'keeper']);
    assert.equal(full.vmState, 'running');
    assert.deepEqual(
      full.disks.map((d) => d.source),
      ['local/data', 'local/docs'],
    );
    const [disk, docs] = full.disks;
    assert.deepEqual([disk.source, disk.sizeBytes, disk.chunks], ['local/data', 64 * MiB, 16]);
    assert.equal(disk.newChunks, 4, 'chunk 0 (marker) and chunks 1-3 (random data); the other 12 are zero');
    assert.equal(disk.zeroChunks, 12);
    assert.ok(disk.sentBytes >= 16 * MiB && disk.sentBytes < 16 * MiB + 4096, `sent ${disk.sentBytes}`);
    assert.ok(docs.newChunks >= 1, 'the filesystem of the second volume');
    docsChunks = docs.newChunks;
    assert.ok(full.catalogFiles >= Object.keys(DOCUMENTS).length, `catalog of ${full.catalogFiles} files`);
    assert.deepEqual(
      full.disks.map((d) => [d.readBytes, d.changedSince]),
      [
        [64 * MiB, undefined],
        [16 * MiB, undefined],
      ],
      'the first backup reads every chunk',
    );
    backups.push(full);

    await writeMarker('keeper', markerB);
    sums.push((await readDisk('keeper')).sha256);
    const next = await nubis.cliJson<Backup>(['backup', 'create', 'keeper']);
    assert.deepEqual(
      next.disks.map((d) => d.newChunks),
      [1, 0],
      'only chunk 0 of the first disk changed',
    );
    assert.deepEqual(
      next.disks.map((d) => [d.changedSince, d.readBytes]),
      [
        [full.id, 4 * MiB],
        [full.id, 0],
      ],
      "changed-block tracking: QEMU's bitmap since the full backup says only chunk 0 was written, so only it is read",
    );
    assert.ok(next.sentBytes < full.sentBytes / 3, `the incremental sent ${next.sentBytes} bytes, the full ${full.sentBytes}`);
    console.log(`# full backup sent ${full.sentBytes} bytes in ${full.durationMs} ms; incremental ${next.sentBytes} bytes in ${next.durationMs} ms`);
    backups.push(next);
    const listed = await nubis.cliJson<Backup[]>(['backup', 'list', '--vm', 'keeper']);
    assert.deepEqual(
      listed.map((b) => b.id),
      backups.map((b) => b.id),
    );
  });

  it('finds backed-up files by a word of their name from the encrypted catalogs, as a plaintext reference would', async () => {
    const reference = (word: string) =>
      Object.keys(DOCUMENTS)
        .filter((path) => fileKeywords(path).includes(word))
        .map((path) => `/${path}`)
        .sort();
    for (const word of ['quarterly', '2026', 'budget', 'readme.txt', 'pdf', 'absent']) {
      const hits = await nubis.cliJson<BackupSearchHit[]>(['backup', 'search', word]);
      const expected = reference(word);
      assert.deepEqual(
        hits.map((hit) => hit.backup),
        expected.length > 0 ? backups.map((b) => b.id) : [],
        word,
      );
      for (const hit of hits) {
        assert.deepEqual(
          hit.files.map((file) => file.disk),
          expected.map(() => 'local/docs'),
          word,
        );
        assert.deepEqual(hit.files.map((file) => file.path).sort(), expected, word);
      }
    }
  });

  it('restores one file of a backup, as search names it, without a VM', async () => {
    const [hit] = await nubis.cliJson<BackupSearchHit[]>(['backup', 'search', 'budget']);
    const [found] = hit.files;
    const output = join(nubis.dataDir, 'budget-restored.ods');
    const restored = await nubis.cliJson<RestoredFile>(['backup', 'file-restore', hit.backup, found.path, '--disk', found.disk, '--output', output]);
    assert.deepEqual([restored.path, restored.disk, restored.sizeBytes], ['/finance/budget.ods', 'local/docs', 1]);
    assert.equal(readFileSync(output, 'utf8'), DOCUMENTS['finance/budget.ods']);
    const refusals: Array<[string[], RegExp]> = [
      [['/finance/budget.ods'], /holds several disks \(local\/data, local\/docs\); name one with --disk/],
      [['/finance', '--disk', 'local/docs'], /\/finance is a directory, not a regular file/],
      [['/finance/none.ods', '--disk', 'local/docs'], /\/finance\/none.ods is not in the backed-up filesystem/],
      [['/finance/budget.ods', '--disk', 'local/nothing'], /has no disk local\/nothing/],
      [['relative/path', '--disk', 'local/docs'], /path/],
      [['/finance/budget.ods', '--disk', 'local/docs', '--output', output], /EEXIST|exists/],
    ];
    for (const [args, reason] of refusals) {
      const refused = await nubis.cli(['backup', 'file-restore', hit.backup, ...args]);
      assert.notEqual(refused.code, 0, args.join(' '));
      assert.match(refused.stderr, reason, args.join(' '));
    }
  });

  it('makes the store prove it holds every backup, with a proof of a few KiB', async () => {
    const audits = await nubis.cliJson<BackupAudit[]>(['backup', 'challenge']);
    assert.deepEqual(
      audits.map((a) => [a.backup, a.passed, a.blocks, a.proofBytes]),
      backups.map((b) => [b.id, true, 460, 4288]),
    );
    console.log(`# challenge of 460 blocks: store ${audits[0].storeMs} ms, verify ${audits[0].verifyMs} ms, proof ${audits[0].proofBytes} bytes`);
  });

  it("keeps no plaintext of the guest's data, the VM's name or its volume in the store's files nor in anything the store received", () => {
    const storeDir = join(nubis.dataDir, 'backups');
    const received = Buffer.concat(traffic);
    assert.ok(received.length > 20 * MiB, `the relay saw the backups go by (${received.length} bytes)`);
    for (const plaintext of [markerA, markerB, 'keeper', 'local/data', 'quarterly', 'budget.ods', 'readme']) {
      const grep = spawnSync('grep', ['-rlaF', plaintext, storeDir, '--exclude=*.sock'], { encoding: 'utf8' });
      assert.equal(grep.status, 1, `${plaintext} appears in ${grep.stdout}`);
      assert.equal(received.indexOf(plaintext), -1, `${plaintext} went to the store in the clear`);
    }
  });

  it('restores each backup as a new VM whose disk has the checksum of its backup point, the second live', async () => {
    for (const [index, backup] of backups.entries()) {
      const name = `restored${index + 1}`;
      const live = index === 1;
      const vm = await nubis.cliJson<Vm & { restore: { live: boolean; runningAfterMs: number; doneAfterMs?: number; pulledBytes?: number } }>([
        'backup',
        'restore',
        backup.id,
        '--as',
        name,
        ...(live ? ['--live'] : []),
      ]);
      assert.equal(vm.state, 'running');
      assert.deepEqual(
        vm.disks.map((d) => d.volume),
        [`local/${name}-data`, `local/${name}-docs`],
      );
      assert.equal(vm.restore.live, live);
      if (live) {
        assert.ok(vm.restore.runningAfterMs <= (vm.restore.doneAfterMs ?? 0), JSON.stringify(vm.restore));
        // Read through the agent's export (a restore in full would have fetched nothing there): at least the 16 MiB written.
        assert.ok((vm.restore.pulledBytes ?? 0) >= 16 * MiB, JSON.stringify(vm.restore));
        console.log(`# live restore: running after ${vm.restore.runningAfterMs} ms, all in after ${vm.restore.doneAfterMs} ms`);
        // All pulled in: each volume stands alone (no backing file left), its backup socket gone.
        for (const volume of ['data', 'docs']) {
          const file = join(nubis.dataDir, 'hosts', 'host-1', 'pools', 'local', `${name}-${volume}.qcow2`);
          const info = JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', file], { encoding: 'utf8' })) as Record<string, unknown>;
          assert.equal(info['backing-filename'], undefined, `${file} has no backing file left`);
          assert.ok(!existsSync(file.replace(/\.qcow2$/, '.restore.sock')), 'its restore socket is gone');
        }
      }
      const disk = await readDisk(name);
      assert.equal(disk.first, index === 0 ? markerA : markerB);
      assert.equal(disk.sha256, sums[index], `the restored disk of ${backup.id} is the disk as it was backed up`);
    }
  });

  it('copies all of a disk as of one instant while the guest writes (crash-consistent)', async () => {
    // The guest writes a counter at 1 MiB (chunk 0), then the same at 13 MiB (chunk 3), over and
    // over: at any instant first == second or first == second + 1. A copy read from start to end
    // while the guest writes would see a later second than first.
    const at = (mib: number) => `dd of=/dev/vda bs=8 count=1 seek=${(mib * MiB) / 8} conv=notrunc,fsync 2>/dev/null`;
    await runOnConsole(
      nubis,
      'keeper',
      `(i=0; while true; do i=$((i+1)); printf '%08d' $i | ${at(1)}; printf '%08d' $i | ${at(13)}; done) & echo $! > /run/writer.pid; echo started`,
    );
    const during = await nubis.cliJson<Backup>(['backup', 'create', 'keeper']);
    await runOnConsole(nubis, 'keeper', 'kill $(cat /run/writer.pid); echo stopped');
    const vm = await nubis.cliJson<Vm>(['backup', 'restore', during.id, '--as', 'instant']);
    assert.equal(vm.state, 'running');
    const read = (mib: number) => `$(dd if=/dev/vda bs=8 count=1 skip=${(mib * MiB) / 8} 2>/dev/null)`;
    const output = await runOnConsole(nubis, 'instant', `echo "counters=[${read(1)} ${read(13)}]"`);
    const match = /counters=\[(\d{8}) (\d{8})\]/.exec(output);
    assert.ok(match, `the counters in ${JSON.stringify(output.slice(-200))}`);
    const [first, second] = [Number(match[1]), Number(match[2])];
    assert.ok(first > 0 && (first === second || first === second + 1), `first ${first}, second ${second}: not of one instant`);
    console.log(`# counters in the backup taken while the guest wrote: ${first} and ${second}`);
    backups.push(during);
    assert.equal((await nubis.cli(['vm', 'delete', 'instant'])).code, 0);
  });

  it('finds a damaged chunk with verify, and a restore of it fails leaving no VM and no volume', async () => {
    const verified = await nubis.cli(['backup', 'verify', backups[1].id]);
    assert.equal(verified.code, 0, verified.stderr);
    // Chunk 0 of the first backup is its own (the second has another chunk 0): damage it in the store.
    const storeDir = join(nubis.dataDir, 'backups');
    const chunksOf = (backup: Backup) => (JSON.parse(readFileSync(join(storeDir, 'backups', `${backup.id}.json`), 'utf8')) as { chunks: string[] }).chunks;
    const files = execFileSync('find', [join(storeDir, 'chunks'), '-type', 'f', '-not', '-name', '*.sum', '-not', '-name', '*.tags'], { encoding: 'utf8' })
      .trim()
      .split('\n');
    assert.equal(files.length, 7 + docsChunks, "the data disk's four chunks of the first backup, one of the second, two of the third, and the filesystem's");
    const own = chunksOf(backups[0]).filter((chunk) => !chunksOf(backups[1]).includes(chunk));
    assert.equal(own.length, 1);
    const victim = join(storeDir, 'chunks', own[0].slice(0, 2), own[0]);
    // One byte in every 10th block of 4 KiB: 2.5% of the backup's blocks.
    const bytes = readFileSync(victim);
    for (let block = 0; block * 4096 < bytes.length; block += 10) bytes[block * 4096 + 7] ^= 0x55;
    writeFileSync(victim, bytes);
    const damaged = await nubis.cli(['backup', 'verify', backups[0].id]);
    assert.notEqual(damaged.code, 0, 'verify finds the damage');
    assert.match(damaged.stderr, new RegExp(`damaged: 0 chunks missing, 1 altered of ${4 + docsChunks}`));
    assert.equal((await nubis.cli(['backup', 'verify', backups[1].id])).code, 0, 'the other backup is whole');
    const challenged = await nubis.cliJson<BackupAudit[]>(['backup', 'challenge', backups[0].id]);
    assert.equal(challenged[0].passed, false, 'the store cannot prove a backup it damaged');
    const audits = await nubis.cliJson<BackupAudit[]>(['backup', 'audits', backups[0].id]);
    assert.deepEqual(
      audits.map((a) => a.passed),
      [true, false],
    );
    assert.equal((await nubis.cliJson<BackupAudit[]>(['backup', 'challenge', backups[1].id]))[0].passed, true);
    const brokenBackup = backups[0];
    const restore = await nubis.cli(['backup', 'restore', brokenBackup.id, '--as', 'broken']);
    assert.notEqual(restore.code, 0);
    assert.match(restore.stderr, /does not authenticate|damaged/);
    const vms = await nubis.cliJson<Vm[]>(['vm', 'list']);
    assert.ok(!vms.some((vm) => vm.name === 'broken'), 'no VM of the failed restore');
    const volumes = await nubis.cliJson<Array<{ name: string }>>(['volume', 'list', '--pool', 'local']);
    assert.ok(!volumes.some((v) => v.name === 'broken-data'), 'no volume of the failed restore');
  });

  it('refuses bad input with a reason, changing nothing', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['backup', 'create', 'ghost'], /No VM ghost/],
      [['backup', 'restore', 'bak-000000000000', '--as', 'x'], /No backup bak-000000000000/],
      [['backup', 'restore', backups[1].id, '--as', 'keeper'], /A VM named keeper exists/],
      [['backup', 'restore', backups[1].id, '--as', 'x', '--pool', 'nopool'], /dir pool/],
      [['backup', 'show', '../../etc'], /Invalid params\.backup/],
    ];
    const before = await nubis.cliJson<Backup[]>(['backup', 'list']);
    for (const [args, message] of cases) {
      const result = await nubis.cli(args);
      assert.notEqual(result.code, 0, args.join(' '));
      assert.match(result.stderr, message, args.join(' '));
    }
    assert.deepEqual(await nubis.cliJson<Backup[]>(['backup', 'list']), before);
  });

  it('backs up a stopped VM, and collects the chunks of deleted backups', async () => {
    assert.equal((await nubis.cli(['vm', 'stop', 'restored2'])).code, 0);
    const stopped = await nubis.cliJson<Backup>(['backup', 'create', 'restored2']);
    assert.equal(stopped.vmState, 'stopped');
    assert.equal(stopped.sentBytes, 0, "its chunks are all in the store already (restored2's disk is backup 2's)");
    // Sending nothing would also be what an unreadable disk (all zeros) gives: the data was read.
    assert.ok(
      stopped.disks.every((d) => d.readBytes === d.sizeBytes && d.zeroChunks < d.chunks),
      `every disk read whole, with data in it: ${JSON.stringify(stopped.disks)}`,
    );
    for (const backup of [...backups, stopped]) assert.equal((await nubis.cli(['backup', 'delete', backup.id])).code, 0);
    const collected = await nubis.cliJson<{ removedChunks: number }>(['backup', 'collect', '--grace', '0']);
    assert.equal(collected.removedChunks, 7 + docsChunks);
    assert.deepEqual(await nubis.cliJson<Backup[]>(['backup', 'list']), []);
  });

  it('backs up a VM booted from a disk image (its FAT files catalogued) and restores it, booting from the restored root disk', async () => {
    const image = join(nubis.dataDir, 'boot-disk.img');
    makeTinyBootDisk(image, 'booter');
    await nubis.cliJson(['image', 'import', 'bootdisk', image]);
    await nubis.cliJson<Vm>(['vm', 'create', 'booter', '--image', 'bootdisk', '--memory', '128', '--host', 'host-1']);
    await untilReady('booter');
    const backup = await nubis.cliJson<Backup>(['backup', 'create', 'booter']);
    assert.deepEqual(
      backup.disks.map((d) => [d.id, d.source]),
      [['boot', 'root']],
    );
    const hits = await nubis.cliJson<BackupSearchHit[]>(['backup', 'search', 'vmlinuz']);
    assert.deepEqual(
      hits.map((hit) => [hit.backup, hit.files]),
      [[backup.id, [{ disk: 'root', path: '/vmlinuz' }]]],
      'the kernel on the FAT root disk, found by name',
    );
    const live = await nubis.cli(['backup', 'restore', backup.id, '--as', 'booter2', '--live']);
    assert.match(live.stderr, /root disk .* restored in full only; restore it without --live/);
    const restored = await nubis.cliJson<Vm>(['backup', 'restore', backup.id, '--as', 'booter2']);
    assert.deepEqual([restored.state, restored.host], ['running', 'host-1']);
    await untilReady('booter2');
    assert.match(await runOnConsole(nubis, 'booter2', 'echo "root=$(ls /dev/vda)"'), /root=\/dev\/vda/);
    assert.equal(readdirSync(join(nubis.dataDir, 'hosts', 'host-1', 'restores')).length, 0, 'the restored root file is gone once the VM has its copy');
    for (const args of [
      ['vm', 'delete', 'booter2'],
      ['vm', 'delete', 'booter'],
      ['backup', 'delete', backup.id],
      ['backup', 'collect', '--grace', '0'],
    ])
      assert.equal((await nubis.cli(args)).code, 0, args.join(' '));
  });

  /**
   * Runs `action` while process `name` (its pid file in run/) is restarted armed to wait at fault
   * point `point`; kills it there, starts it again unarmed, and answers what `action` ended with.
   */
  async function killedAt(name: string, point: FaultPoint, action: () => Promise<CliResult>): Promise<CliResult> {
    const faultDir = mkdtempSync(join(tmpdir(), 'nubis-faults-'));
    let pending: Promise<CliResult>;
    try {
      const pid = Number(readFileSync(join(nubis.dataDir, 'run', `${name}.pid`), 'utf8'));
      process.kill(pid, 'SIGTERM');
      await until(() => !alive(pid), `${name} to stop (the VMs keep running)`);
      const armed = await nubis.cli(['up', '--detach', '--port', String(nubis.port)], { env: { NUBIS_FAULT_POINTS: point, NUBIS_FAULT_DIR: faultDir } });
      assert.equal(armed.code, 0, armed.stderr);
      pending = action();
      const faultFile = join(faultDir, point);
      await until(() => existsSync(faultFile), `${name} to reach ${point}`);
      process.kill(Number(readFileSync(faultFile, 'utf8')), 'SIGKILL');
    } finally {
      rmSync(faultDir, { recursive: true, force: true });
    }
    const restarted = await nubis.cli(['up', '--detach', '--port', String(nubis.port)]);
    assert.equal(restarted.code, 0, restarted.stderr);
    return pending;
  }

  it('a backup interrupted by a killed store is never listed, and the previous one stays whole', async () => {
    await writeMarker('keeper', `charlie-${randomBytes(4).toString('hex')}`);
    const previous = await nubis.cliJson<Backup>(['backup', 'create', 'keeper']);
    assert.ok(
      previous.disks.every((d) => d.changedSince === undefined && d.readBytes === d.sizeBytes),
      "the VM's bitmap is since a backup deleted meanwhile, so it is not trusted: every chunk is read",
    );
    await writeMarker('keeper', `delta-${randomBytes(4).toString('hex')}`);
    // The store stopped once it has every chunk of a backup and before it commits it.
    const failed = await killedAt('backup-store', 'backup.commit.before-write', () => nubis.cli(['backup', 'create', 'keeper']));
    assert.notEqual(failed.code, 0);
    assert.match(failed.stderr, /backup store/i);
    assert.deepEqual(
      (await nubis.cliJson<Backup[]>(['backup', 'list'])).map((b) => b.id),
      [previous.id],
    );
    const committed = readdirSync(join(nubis.dataDir, 'backups', 'backups')).filter((name) => /^bak-[0-9a-f]{12}\.json$/.test(name));
    assert.deepEqual(committed, [`${previous.id}.json`], 'the store committed nothing of the interrupted backup');
    assert.equal((await nubis.cli(['backup', 'verify', previous.id])).code, 0, 'the previous backup is whole');
    const collected = await nubis.cliJson<{ removedChunks: number }>(['backup', 'collect', '--grace', '0']);
    assert.equal(collected.removedChunks, 1, "the interrupted backup's one new chunk is collected");
  });

  it('a backup whose agent is killed midway leaves nothing in the way of the next one', async () => {
    const before = (await nubis.cliJson<Backup[]>(['backup', 'list'])).map((b) => b.id);
    // The agent stopped once its views are mounted: the jobs, exports and NBD server in the VM's QEMU
    // and the storage daemon with its mounts all outlive it.
    const failed = await killedAt('agent-host-1', 'backup.agent.after-views-mounted', () => nubis.cli(['backup', 'create', 'keeper']));
    assert.notEqual(failed.code, 0, 'the interrupted backup failed');
    assert.deepEqual(
      (await nubis.cliJson<Backup[]>(['backup', 'list'])).map((b) => b.id),
      before,
    );
    const next = await nubis.cliJson<Backup>(['backup', 'create', 'keeper']);
    assert.equal(next.vmState, 'running', "the VM ran on through its agent's death");
    assert.deepEqual(
      next.disks.map((d) => [d.changedSince, d.readBytes === d.sizeBytes]),
      next.disks.map(() => [undefined, true]),
      'after a failed backup no bitmap is trusted: every chunk is read once',
    );
    const vmDir = join(nubis.dataDir, 'hosts', 'host-1', 'vms', (await nubis.cliJson<Vm>(['vm', 'show', 'keeper'])).id);
    assert.deepEqual(
      readdirSync(join(vmDir, 'run')).filter((name) => name.startsWith('bak-') || name.startsWith('backup-')),
      [],
      'no fleece or socket is left in the VM folder',
    );
    assert.deepEqual(readdirSync(join(vmDir, 'backup')), [], 'no view, socket or pidfile is left in the views folder');
    assert.ok(!readFileSync('/proc/self/mounts', 'utf8').includes(vmDir), 'no view is left mounted');
  });
});
