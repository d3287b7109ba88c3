/**
 * Backup schedules through the API and the CLI over a fake cluster (no VM boots, no backup runs:
 * the scheduler's runs are src/control/backup-scheduler.test.ts): a schedule is made, replaced,
 * shown, listed and deleted; bad input is refused with the field to change and nothing changed;
 * retention needs the right to delete backups; a schedule goes with its VM; its changes are
 * events; and the CLI prints schedules, and a failed last run under `nubis backup list`.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import type { ChangeEvent } from '../../src/events/change-feed.ts';
import type { BackupSchedule } from '../../src/wire/backup-schemas.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

const run = promisify(execFile);
const nubisBin = join(import.meta.dirname, '..', '..', 'bin', 'nubis.mjs');

describe('backup schedules (API and CLI)', () => {
  let cluster: FakeCluster;
  let url = '';
  const events: ChangeEvent[] = [];

  async function createVm(name: string): Promise<string> {
    const operation = await cluster.services.vms.create({ name, image: 'tiny', cpus: 1, memoryMb: 128, waitReady: false });
    const final = await cluster.services.operations.wait(operation.id);
    assert.equal(final.status, 'succeeded', JSON.stringify(final.error));
    return (final.result as { id: string }).id;
  }

  /** `nubis ARGS` against the fake cluster's API: its exit code and output. */
  async function nubis(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await run(process.execPath, [nubisBin, ...args], {
        env: { ...process.env, NUBIS_URL: url, NUBIS_TOKEN: cluster.token, NUBIS_DATA: cluster.dir },
        timeout: 60_000,
      });
      return { code: 0, stdout, stderr };
    } catch (error) {
      const failed = error as { code?: number; stdout?: string; stderr?: string };
      return { code: failed.code ?? 1, stdout: failed.stdout ?? '', stderr: failed.stderr ?? '' };
    }
  }

  before(async () => {
    cluster = await fakeCluster(['h1']);
    for (const name of ['web', 'db', 'tmpl', 'gone']) await createVm(name);
    await cluster.db.updateTable('vms').set({ template: 1 }).where('name', '=', 'tmpl').execute();
    cluster.services.changes.subscribe(({ event }) => event.type === 'backup-schedule' && events.push(event));
    const app = await cluster.app();
    url = await app.listen({ host: '127.0.0.1', port: 0 });
  });
  after(() => cluster.close());

  it('makes (201), replaces (200), shows, lists and deletes a schedule, publishing each change', async () => {
    const made = await cluster.call<BackupSchedule>('PUT', '/v1/backup-schedules/web', { every: '24h', retention: { keepLast: 24, keepDaily: 7 } });
    assert.equal(made.status, 201, JSON.stringify(made.body));
    assert.deepEqual([made.body.vm, made.body.every, made.body.intervalSeconds], ['web', '1d', 86_400]);
    assert.deepEqual(made.body.retention, { keepLast: 24, keepDaily: 7 });
    assert.deepEqual([made.body.running, made.body.lastRun], [null, null]);
    const firstRun = Date.parse(made.body.nextRunAt) - Date.now();
    assert.ok(firstRun > 86_000_000 && firstRun <= 86_400_000, 'the first run is one interval after the schedule is made');

    // The same interval keeps the next run; the rules are replaced whole.
    const replaced = await cluster.call<BackupSchedule>('PUT', '/v1/backup-schedules/web', { every: '1d', retention: { keepWeekly: 4 } });
    assert.equal(replaced.status, 200);
    assert.equal(replaced.body.nextRunAt, made.body.nextRunAt);
    assert.deepEqual(replaced.body.retention, { keepWeekly: 4 });
    // Another interval: one new interval after the schedule was made.
    const shorter = await cluster.call<BackupSchedule>('PUT', '/v1/backup-schedules/web', { every: '90m' });
    assert.deepEqual([shorter.body.every, shorter.body.retention], ['90m', {}]);
    assert.equal(Date.parse(shorter.body.nextRunAt), Date.parse(made.body.createdAt) + 90 * 60_000);

    const shown = await cluster.call<BackupSchedule>('GET', '/v1/backup-schedules/web');
    assert.deepEqual(shown.body, shorter.body);
    await cluster.call('PUT', '/v1/backup-schedules/db?project=default', { every: '15m' });
    const listed = await cluster.call<BackupSchedule[]>('GET', '/v1/backup-schedules');
    assert.deepEqual(
      listed.body.map((s) => [s.vm, s.every]),
      [
        ['db', '15m'],
        ['web', '90m'],
      ],
    );
    // Built once it is sent: a schedule deleted before that would have no created event to show.
    await cluster.services.changes.settled();

    const deleted = await cluster.call('DELETE', '/v1/backup-schedules/db');
    assert.deepEqual([deleted.status, deleted.body], [200, { deleted: 'db' }]);
    const again = await cluster.call('DELETE', '/v1/backup-schedules/db');
    assert.deepEqual([again.status, again.body.code], [404, 'BACKUP_SCHEDULE_NOT_FOUND']);
    assert.match(again.body.message ?? '', /VM db has no backup schedule; make one with nubis backup schedule db --every 1d/);

    await cluster.services.changes.settled();
    const seen = events.map((event) => `${event.action} ${event.name}`);
    for (const expected of ['created web', 'updated web', 'created db', 'deleted db']) assert.ok(seen.includes(expected), `${expected} in ${seen.join(', ')}`);
    const webEvent = events.find((event) => event.name === 'web' && event.action === 'updated');
    assert.equal(webEvent?.project, 'default');
    assert.equal((webEvent?.resource as BackupSchedule | undefined)?.vm, 'web');
  });

  it('refuses bad input, naming what to change, and changes nothing', async () => {
    const before = (await cluster.call<BackupSchedule>('GET', '/v1/backup-schedules/web')).body;
    for (const [body, code, message] of [
      [{ every: '30s' }, 'VALIDATION_FAILED', /every/],
      [{ every: '0m' }, 'VALIDATION_FAILED', /every/],
      [{ every: '1 h' }, 'VALIDATION_FAILED', /every/],
      [{ every: '400d' }, 'BACKUP_SCHEDULE_INTERVAL_INVALID', /Interval 400d is not a whole number of minutes, hours, days or weeks from 1m to 366d/],
      [{ every: '53w' }, 'BACKUP_SCHEDULE_INTERVAL_INVALID', /53w/],
      [{ every: '1h', retention: { keepLast: 0 } }, 'VALIDATION_FAILED', /keepLast/],
      [{ every: '1h', retention: { keepForever: 1 } }, 'UNKNOWN_FIELD', /keepForever/],
      [{ every: '1h', at: '02:00' }, 'UNKNOWN_FIELD', /at/],
    ] as const) {
      const refused = await cluster.call('PUT', '/v1/backup-schedules/web', body);
      assert.deepEqual([refused.status, refused.body.code], [400, code], JSON.stringify(body));
      assert.match(refused.body.message ?? '', message);
    }
    assert.deepEqual((await cluster.call('GET', '/v1/backup-schedules/web')).body, before);

    const unknown = await cluster.call('PUT', '/v1/backup-schedules/nosuch', { every: '1h' });
    assert.deepEqual([unknown.status, unknown.body.code], [404, 'VM_NOT_FOUND']);
    const template = await cluster.call('PUT', '/v1/backup-schedules/tmpl', { every: '1h' });
    assert.deepEqual([template.status, template.body.code], [409, 'VM_IS_TEMPLATE']);
    assert.match(template.body.message ?? '', /cannot be backed up on a schedule/);
    const none = await cluster.call('GET', '/v1/backup-schedules/db');
    assert.deepEqual([none.status, none.body.code], [404, 'BACKUP_SCHEDULE_NOT_FOUND']);
    assert.deepEqual(
      (await cluster.call<BackupSchedule[]>('GET', '/v1/backup-schedules')).body.map((s) => s.vm),
      ['web'],
    );
  });

  it('lets only who may delete backups set retention rules (they delete backups)', async () => {
    const { access } = cluster.services;
    await access.roles.create({ name: 'backup-taker', permissions: ['backup.read', 'backup.create'] });
    const user = await access.users.create('taker', 'taker-password-1');
    const row = await access.users.row(user.name);
    await access.roles.grant({ type: 'user', id: row.id, name: user.name }, 'backup-taker', 'prj-1');
    const principal = { userId: row.id, userName: user.name, tokenId: '', tokenName: '', grants: [], tokenProjectId: null, tokenRole: null };
    const { secret } = await access.tokens.create(principal, { name: 'taker', kind: 'session' });
    const app = await cluster.app();
    const put = (body: unknown) =>
      app.inject({
        method: 'PUT',
        url: '/v1/backup-schedules/db',
        headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
        payload: JSON.stringify(body),
      });
    const pruning = await put({ every: '1h', retention: { keepLast: 3 } });
    assert.equal(pruning.statusCode, 403);
    assert.match(pruning.json().message, /backup\.delete/);
    assert.equal((await cluster.call('GET', '/v1/backup-schedules/db')).status, 404, 'nothing was made');
    const keepingAll = await put({ every: '1h' });
    assert.equal(keepingAll.statusCode, 201, keepingAll.body);
    assert.equal((await cluster.call('DELETE', '/v1/backup-schedules/db')).status, 200);
  });

  it('deletes a schedule with its VM', async () => {
    const gone = await cluster.services.vms.row('gone');
    assert.equal((await cluster.call('PUT', '/v1/backup-schedules/gone', { every: '1h' })).status, 201);
    const deleting = await cluster.call<{ operation: { id: string } }>('DELETE', '/v1/vms/gone');
    assert.equal((await cluster.services.operations.wait(deleting.body.operation.id)).status, 'succeeded');
    assert.equal(await cluster.db.selectFrom('backup_schedules').select('vm_id').where('vm_id', '=', gone.id).executeTakeFirst(), undefined);
  });

  it('prints schedules with the CLI, and a failed last run under nubis backup list', async () => {
    const set = await nubis('--json', 'backup', 'schedule', 'db', '--every', '6h', '--keep-last', '24', '--keep-daily', '7', '--keep-monthly', '3');
    assert.equal(set.code, 0, set.stderr);
    const saved = JSON.parse(set.stdout) as BackupSchedule;
    assert.deepEqual([saved.vm, saved.every, saved.retention], ['db', '6h', { keepLast: 24, keepDaily: 7, keepMonthly: 3 }]);
    const human = await nubis('backup', 'schedule', 'set', 'db', '--every', '1h', '--keep-last', '24', '--keep-daily', '7');
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /^db: a backup every 1h, keeping last 24, daily 7; next at \d{4}-/);
    const badKeep = await nubis('backup', 'schedule', 'db', '--every', '1h', '--keep-last', 'many');
    assert.notEqual(badKeep.code, 0);
    assert.match(badKeep.stderr, /--keep-last must be a whole number, not many/);

    // The last run failed: the schedule says so, and so does the backup list.
    const dbId = (await cluster.services.vms.row('db')).id;
    await cluster.db
      .updateTable('backup_schedules')
      .set({
        ...{
          last_run_at: '2026-06-11T02:00:00.000Z',
          last_finished_at: '2026-06-11T02:00:05.000Z',
          last_status: 'failed',
          last_operation_id: 'op-00000000000f',
        },
        ...{ last_backup_id: null, last_pruned: 0, last_error_code: 'BACKUP_FAILED', last_error: 'Disk vda of VM db could not be read' },
      })
      .where('vm_id', '=', dbId)
      .execute();
    const list = await nubis('backup', 'schedule', 'list');
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /^VM +EVERY +KEEP +NEXT RUN +LAST RUN +OUTCOME/);
    assert.match(list.stdout, /\ndb +1h +last 24, daily 7 +\S+ +2026-06-11T02:00:00.000Z +FAILED: BACKUP_FAILED: Disk vda of VM db could not be read/);
    assert.match(list.stdout, /\nweb +90m +all /);
    const shown = await nubis('backup', 'schedule', 'show', 'db');
    assert.match(shown.stdout, /Outcome: +FAILED: BACKUP_FAILED: Disk vda/);
    assert.match(shown.stdout, /Operation: +op-00000000000f/);
    const backups = await nubis('backup', 'list');
    assert.equal(backups.code, 0, backups.stderr);
    assert.match(backups.stdout, /LAST SCHEDULED RUN +VM +AT +ERROR\nFAILED +db +2026-06-11T02:00:00.000Z +BACKUP_FAILED: Disk vda of VM db could not be read/);
    assert.doesNotMatch((await nubis('backup', 'list', '--vm', 'web')).stdout, /FAILED/, 'only the listed VM');
    assert.deepEqual(JSON.parse((await nubis('--json', 'backup', 'list')).stdout), [], '--json lists backups only');

    const deleted = await nubis('--json', 'backup', 'schedule', 'delete', 'db');
    assert.deepEqual(JSON.parse(deleted.stdout), { deleted: 'db' });
    const missing = await nubis('backup', 'schedule', 'show', 'db');
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /VM db has no backup schedule/);
  });
});
