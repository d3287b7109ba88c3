import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { backupsToPrune, type PrunableBackup, type RetentionRules } from './backup-prune.ts';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/** A Thursday noon, far from any period boundary. */
const NOW = Date.parse('2026-06-11T12:00:00.000Z');

/** Backups with ids b01, b02... (ids grow with time, as `bak-` ids do not: the tie tests set their own). */
function backups(...times: string[]): PrunableBackup[] {
  return times.map((createdAt, index) => ({ id: `b${String(index + 1).padStart(2, '0')}`, createdAt }));
}

/** The ids that `rules` prune of `list`. */
function pruned(list: PrunableBackup[], rules: RetentionRules, now = NOW): string[] {
  return backupsToPrune(list, rules, now).map((backup) => backup.id);
}

const iso = (ms: number) => new Date(ms).toISOString();

describe('backupsToPrune', () => {
  const originalZone = process.env.TZ;
  afterEach(() => {
    if (originalZone === undefined) delete process.env.TZ;
    else process.env.TZ = originalZone;
  });

  it('keeps everything without a rule, as PBS keep-all (a rule of 0 is no rule)', () => {
    const list = backups(iso(NOW - 3 * DAY), iso(NOW - 2 * DAY), iso(NOW - DAY));
    assert.deepEqual(pruned(list, {}), []);
    assert.deepEqual(pruned(list, { keepLast: 0, keepDaily: 0 }), []);
    assert.deepEqual(pruned([], { keepLast: 1 }), []);
  });

  it('keep-last N keeps the N newest and prunes the rest, in the order given', () => {
    const list = backups(iso(NOW - 5 * HOUR), iso(NOW - 4 * HOUR), iso(NOW - 3 * HOUR), iso(NOW - 2 * HOUR), iso(NOW - HOUR));
    assert.deepEqual(pruned(list, { keepLast: 3 }), ['b01', 'b02']);
    assert.deepEqual(pruned([...list].reverse(), { keepLast: 3 }), ['b02', 'b01']);
    assert.deepEqual(pruned(list, { keepLast: 5 }), []);
    assert.deepEqual(pruned(list, { keepLast: 50 }), []);
    assert.deepEqual(pruned(list, { keepLast: 1 }), ['b01', 'b02', 'b03', 'b04']);
  });

  it('keep-hourly keeps the newest backup of each of the N newest hours that have one', () => {
    const list = backups(
      '2026-06-11T08:10:00.000Z',
      '2026-06-11T09:05:00.000Z',
      '2026-06-11T09:50:00.000Z',
      '2026-06-11T10:00:00.000Z',
      '2026-06-11T10:59:59.999Z',
      '2026-06-11T11:15:00.000Z',
    );
    assert.deepEqual(pruned(list, { keepHourly: 3 }), ['b01', 'b02', 'b04']);
    assert.deepEqual(pruned(list, { keepHourly: 1 }), ['b01', 'b02', 'b03', 'b04', 'b05']);
  });

  it('keep-daily counts days that have backups: after days without one it reaches further back', () => {
    // Backups on June 1-4 and 9-10 (the 5th to 8th failed), two a day.
    const days = ['01', '02', '03', '04', '09', '10'];
    const list = backups(...days.flatMap((day) => [`2026-06-${day}T01:00:00.000Z`, `2026-06-${day}T13:00:00.000Z`]));
    // The newest of each of the four newest days: the 10th, 9th, 4th and 3rd.
    assert.deepEqual(pruned(list, { keepDaily: 4 }), ['b01', 'b02', 'b03', 'b04', 'b05', 'b07', 'b09', 'b11']);
  });

  it('a later rule does not spend a place on a period an earlier rule already kept a backup of (PBS)', () => {
    // Every 6 hours from June 1 00:00 to June 3 06:00: ten backups.
    const list = Array.from({ length: 10 }, (_, index) => ({ id: `b${index}`, createdAt: iso(Date.parse('2026-06-01T00:00:00Z') + index * 6 * HOUR) }));
    // keep-last 2 holds June 3 (b9, b8); keep-daily 2 then keeps the newest of June 2 (b7) and June 1 (b3).
    assert.deepEqual(pruned(list, { keepLast: 2, keepDaily: 2 }), ['b0', 'b1', 'b2', 'b4', 'b5', 'b6']);
    // keep-last 1 holds June 3 with b9: b8, of the same day, is not kept by keep-daily, which keeps b7 and b3.
    assert.deepEqual(pruned(list, { keepLast: 1, keepDaily: 2 }), ['b0', 'b1', 'b2', 'b4', 'b5', 'b6', 'b8']);
    // keep-daily alone keeps June 3's and June 2's newest.
    assert.deepEqual(pruned(list, { keepDaily: 2 }), ['b0', 'b1', 'b2', 'b3', 'b4', 'b5', 'b6', 'b8']);
  });

  it('combines last, hourly, daily, weekly and monthly as a PBS policy does', () => {
    // Hourly backups for the last 3 days, then one a day at noon for 120 days before that.
    const hourly = Array.from({ length: 72 }, (_, index) => iso(NOW - index * HOUR));
    const daily = Array.from({ length: 120 }, (_, index) => iso(NOW - 3 * DAY - index * DAY));
    const list = backups(...hourly, ...daily);
    const gone = new Set(pruned(list, { keepLast: 4, keepHourly: 24, keepDaily: 7, keepWeekly: 4, keepMonthly: 3 }));
    const kept = list.filter((backup) => !gone.has(backup.id)).map((backup) => backup.createdAt);
    // keep-last 4 and keep-hourly 24: the 28 newest hours (June 10 09:00 to June 11 12:00).
    assert.deepEqual(kept.slice(0, 28), hourly.slice(0, 28));
    // Then the newest of June 9 to June 3 (June 10 and 11 are held already), of the ISO weeks
    // before (June 1-7 is held by June 3), and of the months before (May is held by May 10).
    assert.deepEqual(
      kept.slice(28),
      [
        '2026-06-09T23:00',
        '2026-06-08T23:00',
        '2026-06-07T12:00',
        '2026-06-06T12:00',
        '2026-06-05T12:00',
        '2026-06-04T12:00',
        '2026-06-03T12:00',
        '2026-05-31T12:00',
        '2026-05-24T12:00',
        '2026-05-17T12:00',
        '2026-05-10T12:00',
        '2026-04-30T12:00',
        '2026-03-31T12:00',
        '2026-02-28T12:00',
      ].map((at) => `${at}:00.000Z`),
    );
    assert.equal(gone.size, list.length - 42);
  });

  it('keep-weekly uses ISO weeks in UTC, also across a year end', () => {
    // 2026-12-28 (Monday) to 2027-01-03 (Sunday) is ISO week 2026-W53; 2027-01-04 starts 2027-W01.
    const list = backups(
      '2026-12-27T23:59:59.000Z', // Sunday: 2026-W52
      '2026-12-28T00:00:00.000Z', // Monday: 2026-W53
      '2027-01-01T12:00:00.000Z', // Friday: 2026-W53
      '2027-01-03T23:59:59.999Z', // Sunday: 2026-W53
      '2027-01-04T00:00:00.000Z', // Monday: 2027-W01
    );
    const now = Date.parse('2027-01-05T00:00:00Z');
    assert.deepEqual(pruned(list, { keepWeekly: 3 }, now), ['b02', 'b03']);
    assert.deepEqual(pruned(list, { keepWeekly: 2 }, now), ['b01', 'b02', 'b03']);
    // 2024-12-30 (Monday) is in 2025-W01 with 2025-01-05; 2024-12-29 (Sunday) is in 2024-W52.
    const other = backups('2024-12-29T10:00:00Z', '2024-12-30T10:00:00Z', '2025-01-05T10:00:00Z');
    assert.deepEqual(pruned(other, { keepWeekly: 5 }, Date.parse('2025-02-01T00:00:00Z')), ['b02']);
  });

  it('keep-monthly and keep-yearly take the newest of each month and year', () => {
    const list = backups(
      '2024-05-01T00:00:00Z',
      '2025-01-31T23:00:00Z',
      '2025-12-01T00:00:00Z',
      '2025-12-31T23:59:59.999Z',
      '2026-01-01T00:00:00Z',
      '2026-01-15T00:00:00Z',
    );
    const now = Date.parse('2026-02-01T00:00:00Z');
    assert.deepEqual(pruned(list, { keepMonthly: 2 }, now), ['b01', 'b02', 'b03', 'b05']);
    assert.deepEqual(pruned(list, { keepYearly: 3 }, now), ['b02', 'b03', 'b05']);
    // keep-monthly 1 holds 2026; keep-yearly 2 then keeps 2025's newest and 2024's.
    assert.deepEqual(pruned(list, { keepMonthly: 1, keepYearly: 2 }, now), ['b02', 'b03', 'b05']);
  });

  it('places backups by UTC whatever the zone the process or the time string is in', () => {
    // 00:30 on April 1st at +02:00 is March 31st 22:30 UTC; 23:30 on March 31st at -02:00 is April 1st 01:30 UTC.
    const list = backups('2026-03-15T12:00:00Z', '2026-04-01T00:30:00+02:00', '2026-03-31T23:30:00-02:00', '2026-04-10T12:00:00Z');
    const now = Date.parse('2026-05-01T00:00:00Z');
    for (const zone of ['UTC', 'Pacific/Kiritimati', 'America/St_Johns', 'Asia/Kathmandu']) {
      process.env.TZ = zone;
      // March's newest is b02 (22:30 UTC on the 31st); April's is b04.
      assert.deepEqual(pruned(list, { keepMonthly: 2 }, now), ['b01', 'b03'], zone);
      // b03, dated March 31st in its own zone, is April 1st in UTC: the newest two days are April 10th and 1st.
      assert.deepEqual(pruned(list, { keepDaily: 2 }, now), ['b01', 'b02'], zone);
    }
  });

  it('breaks ties of equal times by id, the newest being the greater id, whatever the input order', () => {
    const at = '2026-06-11T10:00:00.000Z';
    const list = [
      { id: 'bak-00000000000b', createdAt: at },
      { id: 'bak-00000000000a', createdAt: at },
      { id: 'bak-00000000000c', createdAt: at },
    ];
    assert.deepEqual(pruned(list, { keepLast: 1 }), ['bak-00000000000b', 'bak-00000000000a']);
    assert.deepEqual(pruned([...list].reverse(), { keepLast: 1 }), ['bak-00000000000a', 'bak-00000000000b']);
    assert.deepEqual(pruned(list, { keepDaily: 5 }), ['bak-00000000000b', 'bak-00000000000a']);
    assert.deepEqual(pruned(list, { keepLast: 2 }), ['bak-00000000000a']);
  });

  it('keeps, and counts for no rule, a backup dated after now or with no readable date (a clock that went back)', () => {
    const list = backups(iso(NOW - 3 * HOUR), iso(NOW - 2 * HOUR), iso(NOW - HOUR), iso(NOW + HOUR), 'not a time');
    // keep-last 1 keeps the newest backup before now (b03), and b04 and b05 are left alone.
    assert.deepEqual(pruned(list, { keepLast: 1 }), ['b01', 'b02']);
    assert.deepEqual(pruned(list, { keepLast: 1 }, NOW + 2 * HOUR), ['b01', 'b02', 'b03']);
    // A backup taken exactly now is placed.
    assert.deepEqual(pruned(backups(iso(NOW - HOUR), iso(NOW)), { keepLast: 1 }), ['b01']);
  });

  it('always keeps the newest backup when any rule is set', () => {
    const list = backups(...Array.from({ length: 40 }, (_, index) => iso(NOW - index * 7 * HOUR)));
    for (const rules of [{ keepLast: 1 }, { keepHourly: 1 }, { keepDaily: 1 }, { keepWeekly: 1 }, { keepMonthly: 1 }, { keepYearly: 1 }]) {
      const gone = pruned(list, rules);
      assert.ok(!gone.includes('b01'), JSON.stringify(rules));
      assert.equal(gone.length, 39, JSON.stringify(rules));
    }
  });
});
