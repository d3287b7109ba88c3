/**
 * The backup scheduler over a fake cluster (real services, database and backup store; fake
 * agents whose takeBackup answers at once, or fails or waits on cue), its rounds driven by hand
 * with a clock of its own: a due schedule runs once and never twice at once, a failed run is
 * recorded and published as an event, retention deletes exactly the backups the rules let go
 * (taken by hand or not, of this VM only), a restart keeps the schedule and takes up the run a
 * stop cut off, one host backs up one VM at a time, and a clock put back does not hold backups
 * back. No VM boots.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type FakeCluster, fakeCluster } from '../../test/helpers/fake-cluster.ts';
import { NubisError } from '../core/errors.ts';
import { newId } from '../core/ids.ts';
import type { ChangeEvent } from '../events/change-feed.ts';
import type { BackupSchedule } from '../wire/backup-schemas.ts';
import { BackupScheduler } from './backup-scheduler.ts';
import type { BackupService } from './backups.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

describe('backup scheduler', () => {
  let cluster: FakeCluster;
  const vmIds = new Map<string, string>();
  /**
   * The scheduler's clock: the real one moved on by the test. Backups are dated by the real
   * clock (control/backups.ts), so the scheduler's is never behind it but where a test says so.
   */
  let offsetMs = 0;
  const now = () => Date.now() + offsetMs;
  const schedulers: BackupScheduler[] = [];
  /** While set, deleting a backup fails with it, as when the backup store cannot be reached. */
  let storeDown: Error | undefined;
  const events: ChangeEvent[] = [];
  /** Held agent calls, released at the end also when a test fails (or closing would wait for them). */
  const releases: Array<() => void> = [];
  const hold = (host: string): (() => void) => {
    const release = cluster.agent(host).hold('takeBackup');
    releases.push(release);
    return release;
  };

  /** Waits until `condition` holds: a backup's agent call comes a moment after its operation starts. */
  async function until(condition: () => boolean | Promise<boolean>, what: string): Promise<void> {
    for (const deadline = Date.now() + 10_000; !(await condition()); await new Promise((resolve) => setTimeout(resolve, 10)))
      if (Date.now() > deadline) throw new Error(`Still not ${what} after 10 s`);
  }

  /** A scheduler over the cluster's services, its timer too slow to fire: the test calls tick. */
  function scheduler(options: { runsPerHost?: number } = {}): BackupScheduler {
    const backups: Pick<BackupService, 'create' | 'remove'> = {
      create: (ref, project) => cluster.services.backups.create(ref, project),
      remove: (id, project) => (storeDown ? Promise.reject(storeDown) : cluster.services.backups.remove(id, project)),
    };
    const made = new BackupScheduler({ db: cluster.db, backups, operations: cluster.services.operations }, { now, tickMs: 3_600_000, ...options });
    schedulers.push(made);
    return made;
  }

  const schedules = () => cluster.services.backupSchedules;
  const show = (vm: string): Promise<BackupSchedule> => schedules().show(vm);
  const takeBackupCalls = (host: string) => cluster.agent(host).callsOf('takeBackup').length;
  /** Moves the scheduler's clock just past the VM's next run. */
  const passNextRun = async (vm: string) => {
    offsetMs = Date.parse((await show(vm)).nextRunAt) - Date.now() + 1_000;
  };
  const backupsOf = async (vm: string) =>
    (await cluster.db.selectFrom('backups').select(['id', 'created_at']).where('vm_id', '=', vmIds.get(vm)!).orderBy('created_at').execute()).map(
      (row) => row.id,
    );

  /** A backup row as one taken by hand `agoMs` before now would leave (no chunks: the store does not know it). */
  async function addBackup(vm: string, agoMs: number, vmId = vmIds.get(vm)!): Promise<string> {
    const id = newId('bak');
    await cluster.db
      .insertInto('backups')
      .values({
        id,
        project_id: 'prj-1',
        vm_id: vmId,
        vm_name: vm,
        vm_state: 'running',
        disks: '[]',
        size_bytes: 0,
        sent_bytes: 0,
        stored_bytes: 0,
        duration_ms: 1,
        settings: '{}',
        created_at: new Date(Date.now() - agoMs).toISOString(),
        catalog_files: 0,
        catalog_notes: '[]',
      })
      .execute();
    return id;
  }

  before(async () => {
    // The fake cluster runs a real backup store: deleting a backup reaches it.
    cluster = await fakeCluster(['h1', 'h2']);
    for (const [name, host] of [
      ['web', 'h1'],
      ['db', 'h1'],
      ['api', 'h2'],
      ['cache', 'h2'],
    ]) {
      const operation = await cluster.services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 128, host, waitReady: false });
      const final = await cluster.services.operations.wait(operation.id);
      assert.equal(final.status, 'succeeded', JSON.stringify(final.error));
      vmIds.set(name, (final.result as { id: string }).id);
    }
    cluster.services.changes.subscribe(({ event }) => event.type === 'backup-schedule' && events.push(event));
  });
  after(async () => {
    for (const release of releases) release();
    for (const made of schedulers) await made.stop();
    for (const made of schedulers) await made.settled();
    await cluster.close();
  });

  it('runs a due schedule once, not before it is due, and never twice at once', async () => {
    // Room for more runs on the host: what stops a second run of web is its schedule's own.
    const runner = scheduler({ runsPerHost: 4 });
    await runner.start();
    const { schedule } = await schedules().set('web', { every: '1h', retention: { keepLast: 10 } });
    assert.equal(Date.parse(schedule.nextRunAt) - Date.now() > 59 * MINUTE, true, 'the first run is one interval away');
    await runner.tick();
    assert.equal(takeBackupCalls('h1'), 0);

    const release = hold('h1');
    await passNextRun('web');
    await runner.tick();
    await until(() => takeBackupCalls('h1') === 1, 'backing web up');
    const running = await show('web');
    assert.ok(running.running?.operation, 'the run under way and its operation are shown');
    // Due again while the first still runs (an hour later): no second run beside it.
    offsetMs += HOUR;
    await runner.tick();
    await runner.tick();
    assert.equal(takeBackupCalls('h1'), 1);
    const backingUp = (await cluster.services.operations.list({ status: 'running' })).filter((op) => op.kind === 'backup.create' && op.target.name === 'web');
    assert.deepEqual(
      backingUp.map((op) => op.id),
      [running.running?.operation],
      'one backup operation of web, the first',
    );
    release();
    await runner.settled();
    const ran = await show('web');
    assert.equal(ran.running, null);
    assert.equal(ran.lastRun?.status, 'succeeded');
    assert.deepEqual(await backupsOf('web'), [ran.lastRun?.backup]);

    // The hour missed meanwhile runs once, then the schedule keeps its phase.
    await runner.tick();
    await runner.settled();
    assert.equal(takeBackupCalls('h1'), 2);
    await runner.tick();
    await runner.settled();
    assert.equal(takeBackupCalls('h1'), 2);
    const next = Date.parse((await show('web')).nextRunAt);
    assert.equal((next - Date.parse(schedule.nextRunAt)) % HOUR, 0, 'the next run is a whole number of intervals after the first');
    assert.ok(next > now() && next <= now() + HOUR);
    await runner.stop();
  });

  it('records a failed run with its error, prunes nothing, and publishes it as an event', async () => {
    const runner = scheduler();
    await runner.start();
    const older = [await addBackup('db', 3 * DAY), await addBackup('db', 2 * DAY)];
    await schedules().set('db', { every: '15m', retention: { keepLast: 1 } });
    cluster.agent('h1').failNext('takeBackup', new NubisError('BACKUP_FAILED', 'Disk vda of VM db could not be read: I/O error'));
    await passNextRun('db');
    events.length = 0;
    await runner.tick();
    await runner.settled();
    const failed = await show('db');
    assert.equal(failed.lastRun?.status, 'failed');
    assert.equal(failed.lastRun?.error?.code, 'BACKUP_FAILED');
    assert.match(failed.lastRun?.error?.message ?? '', /Disk vda of VM db could not be read/);
    assert.equal(failed.lastRun?.backup, null);
    assert.ok(failed.lastRun?.operation, 'the failed operation is named');
    assert.deepEqual(await backupsOf('db'), older, 'a failed backup prunes nothing');
    await cluster.services.changes.settled();
    const published = events.find((event) => event.name === 'db' && (event.resource as BackupSchedule | undefined)?.lastRun?.status === 'failed');
    assert.ok(published, `an event shows the failure: ${JSON.stringify(events)}`);
    assert.equal(published.type, 'backup-schedule');
    assert.equal(published.project, 'default');

    // A backup that cannot even start (the VM is migrating) is a failed run too, without an operation.
    const claim = cluster.services.owner.claim(vmIds.get('db')!, 'migrate', 'db');
    try {
      await passNextRun('db');
      await runner.tick();
      await runner.settled();
    } finally {
      claim.release();
    }
    const busy = await show('db');
    assert.equal(busy.lastRun?.error?.code, 'VM_BUSY');
    assert.equal(busy.lastRun?.operation, null);
    assert.equal(busy.running, null, 'the schedule is free for its next run');

    // The next run that works clears the failure and prunes.
    await passNextRun('db');
    await runner.tick();
    await runner.settled();
    const good = await show('db');
    assert.equal(good.lastRun?.status, 'succeeded');
    assert.equal(good.lastRun?.error, null);
    assert.equal(good.lastRun?.pruned, 2);
    assert.deepEqual(await backupsOf('db'), [good.lastRun?.backup]);
    await runner.stop();
  });

  it("prunes the VM's backups, taken by hand or scheduled, by the rules, and nobody else's", async () => {
    const runner = scheduler();
    await runner.start();
    // Ten backups by hand, a day apart, the newest a day old.
    const byHand: string[] = [];
    for (let days = 10; days >= 1; days -= 1) byHand.push(await addBackup('api', days * DAY));
    // An earlier VM of the same name, and another VM: not this schedule's.
    const earlierApi = await addBackup('api', 5 * DAY, 'vm-000000000000');
    const otherVm = await addBackup('cache', 20 * DAY);
    await schedules().set('api', { every: '1d', retention: { keepLast: 2, keepDaily: 4 } });
    await passNextRun('api');
    await runner.tick();
    await runner.settled();
    const ran = await show('api');
    assert.equal(ran.lastRun?.status, 'succeeded', JSON.stringify(ran.lastRun));
    // keep-last 2: the new one and the day-old one; keep-daily 4: the four days before.
    assert.deepEqual(await backupsOf('api'), [...byHand.slice(5), ran.lastRun?.backup]);
    assert.equal(ran.lastRun?.pruned, 5);
    const left = (await cluster.db.selectFrom('backups').select('id').where('id', 'in', [earlierApi, otherVm]).execute()).map((row) => row.id);
    assert.deepEqual(left.sort(), [earlierApi, otherVm].sort());

    // A backup that retention cannot delete (the store is unreachable) fails the run, naming the backup it did take.
    storeDown = new NubisError('BACKUP_STORE_UNREACHABLE', 'The backup store does not answer on its socket');
    try {
      await passNextRun('api');
      await runner.tick();
      await runner.settled();
    } finally {
      storeDown = undefined;
    }
    const unpruned = await show('api');
    assert.equal(unpruned.lastRun?.status, 'failed');
    assert.equal(unpruned.lastRun?.error?.code, 'BACKUP_PRUNE_FAILED');
    assert.match(
      unpruned.lastRun?.error?.message ?? '',
      /Retention deleted 0 of 1 backups; 1 could not be deleted, bak-[0-9a-f]{12}: The backup store does not answer/,
    );
    assert.ok(unpruned.lastRun?.backup && (await backupsOf('api')).includes(unpruned.lastRun.backup), 'the backup it took is kept and named');
    await runner.stop();
  });

  it('keeps schedules across a restart and takes up the run a stop cut off, from its operation', async () => {
    const first = scheduler();
    await first.start();
    await schedules().set('cache', { every: '6h', retention: { keepLast: 1 } });
    const before = await show('cache');
    const release = hold('h2');
    await passNextRun('cache');
    await first.tick();
    const cut = (await show('cache')).running?.operation;
    assert.ok(cut);
    await first.stop();
    release();
    await cluster.services.operations.wait(cut);
    await first.settled();
    assert.ok((await show('cache')).running, 'a stopped scheduler leaves the run to the next start');

    const second = scheduler();
    await second.start();
    await second.settled();
    const taken = await show('cache');
    assert.equal(taken.running, null);
    assert.equal(taken.lastRun?.status, 'succeeded');
    assert.equal(taken.lastRun?.operation, cut);
    assert.deepEqual(await backupsOf('cache'), [taken.lastRun?.backup], 'the run taken up was pruned too');
    assert.equal(taken.every, before.every);
    assert.deepEqual(taken.retention, before.retention);

    // A run claimed by a control plane that then died: before its backup started, or with its operation interrupted.
    const interrupted = newId('op');
    const at = new Date(now()).toISOString();
    await cluster.db
      .insertInto('operations')
      .values({
        ...{ id: interrupted, kind: 'backup.create', project_id: 'prj-1', target_type: 'vm', target_id: vmIds.get('api')!, target_name: 'api' },
        ...{
          status: 'failed',
          stage: 'backup',
          progress: 0.1,
          error_code: 'OPERATION_INTERRUPTED',
          error_message: 'The control plane stopped while this operation ran',
        },
        ...{ result: null, created_at: at, updated_at: at },
      })
      .execute();
    await cluster.db
      .updateTable('backup_schedules')
      .set({ run_started_at: at, run_operation_id: interrupted })
      .where('vm_id', '=', vmIds.get('api')!)
      .execute();
    await cluster.db.updateTable('backup_schedules').set({ run_started_at: at, run_operation_id: null }).where('vm_id', '=', vmIds.get('db')!).execute();
    await second.stop();
    const third = scheduler();
    await third.start();
    await third.settled();
    for (const vm of ['api', 'db']) {
      const shown = await show(vm);
      assert.equal(shown.running, null, vm);
      assert.equal(shown.lastRun?.status, 'failed', vm);
      assert.equal(shown.lastRun?.error?.code, 'OPERATION_INTERRUPTED', vm);
    }
    assert.equal((await show('api')).lastRun?.operation, interrupted);

    // And the kept schedule runs again when due.
    const calls = takeBackupCalls('h2');
    await passNextRun('cache');
    await third.tick();
    await third.settled();
    assert.equal(takeBackupCalls('h2'), calls + 1);
    assert.equal((await show('cache')).lastRun?.status, 'succeeded');
    await third.stop();
  });

  it("backs up one VM of a host at a time, the host's others when it is done", async () => {
    const runner = scheduler();
    await runner.start();
    for (const vm of ['web', 'db']) await schedules().set(vm, { every: '1h' });
    const due = Math.max(...(await Promise.all(['web', 'db'].map(async (vm) => Date.parse((await show(vm)).nextRunAt)))));
    offsetMs = due - Date.now() + 1_000;
    const calls = takeBackupCalls('h1');
    const release = hold('h1');
    await runner.tick();
    await runner.tick();
    await until(() => takeBackupCalls('h1') === calls + 1, 'backing the first VM of h1 up');
    const running = await Promise.all(['web', 'db'].map(async (vm) => (await show(vm)).running !== null));
    assert.deepEqual(running.sort(), [false, true], 'one backup at a time on h1, the other schedule still due');
    release();
    await runner.settled();
    await runner.tick();
    await runner.settled();
    assert.equal(takeBackupCalls('h1'), calls + 2, 'the other VM of h1 ran next');
    await runner.stop();
  });

  it('replans a next run that a clock put back would hold back', async () => {
    const runner = scheduler();
    offsetMs = 0;
    await runner.start();
    // web alone on h1, so that what runs there is its run.
    await schedules().remove('db');
    await schedules().set('web', { every: '2h' });
    await runner.tick();
    // The clock goes back two days: the next run, now more than one interval ahead, is set one interval from now.
    offsetMs = -2 * DAY;
    await runner.tick();
    const replanned = Date.parse((await show('web')).nextRunAt);
    assert.ok(Math.abs(replanned - (now() + 2 * HOUR)) < MINUTE, `next run ${new Date(replanned).toISOString()}`);
    const calls = takeBackupCalls('h1');
    const lastOperation = (await show('web')).lastRun?.operation;
    offsetMs += 2 * HOUR + MINUTE;
    await runner.tick();
    await runner.settled();
    assert.equal(takeBackupCalls('h1'), calls + 1);
    const ran = await show('web');
    assert.notEqual(ran.lastRun?.operation, lastOperation);
    assert.equal(ran.lastRun?.status, 'succeeded');
    await runner.stop();
  });
});
