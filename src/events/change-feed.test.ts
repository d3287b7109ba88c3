import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Db } from '../state/database.ts';
import { ChangeFeed, type RecordedChange } from './change-feed.ts';

/** A feed over no database: these tests name no project by id, the only thing it would look up. */
function feed(options: { capacity?: number; coalesceMs?: number } = {}) {
  const changes = new ChangeFeed(undefined as unknown as Db, options);
  const state = new Map<string, number>();
  let builds = 0;
  changes.describe('vm', async (id) => {
    builds += 1;
    return state.has(id) ? { name: `name-${id}`, project: { id: 'prj-1', name: 'default' }, resource: { state: state.get(id) } } : undefined;
  });
  const seen: RecordedChange[] = [];
  changes.subscribe((change) => seen.push(change));
  return { changes, state, seen, builds: () => builds };
}

describe('change feed', () => {
  it('makes one event of a burst of updates of one resource, built once, after its create', async () => {
    const { changes, state, seen, builds } = feed({ coalesceMs: 50 });
    state.set('vm-1', 0);
    changes.publish('vm', 'created', 'vm-1');
    for (let i = 1; i <= 100; i++) {
      state.set('vm-1', i);
      changes.publish('vm', 'updated', 'vm-1');
    }
    await changes.settled();
    assert.deepEqual(
      seen.map((c) => [c.event.seq, c.event.action, (c.event.resource as { state: number }).state]),
      [
        [1, 'created', 100],
        [2, 'updated', 100],
      ],
    );
    assert.equal(builds(), 2, 'publishing is cheap: the view is built per event, not per publish');
  });

  it('drops a waiting update when the resource is deleted, and names the deleted one', async () => {
    const { changes, state, seen } = feed({ coalesceMs: 50 });
    state.set('vm-2', 1);
    changes.publish('vm', 'created', 'vm-2');
    await changes.settled();
    changes.publish('vm', 'updated', 'vm-2');
    state.delete('vm-2');
    changes.publish('vm', 'deleted', 'vm-2');
    await changes.settled();
    assert.deepEqual(
      seen.map((c) => [c.event.action, c.event.name, c.event.project, 'resource' in c.event]),
      [
        ['created', 'name-vm-2', 'default', true],
        ['deleted', 'name-vm-2', 'default', false],
      ],
    );
  });

  it('resumes after an event it still holds, and says reset for one too old, of another epoch, or never sent', async () => {
    const { changes, state } = feed({ capacity: 5, coalesceMs: 10 });
    for (let i = 0; i < 8; i++) {
      state.set(`vm-${i}`, i);
      changes.publish('vm', 'created', `vm-${i}`);
    }
    await changes.settled();
    const resumed = changes.resumeAfter(changes.eventId(5));
    assert.ok('events' in resumed);
    assert.deepEqual(
      resumed.events.map((c) => c.event.seq),
      [6, 7, 8],
    );
    const fromOldest = changes.resumeAfter(changes.eventId(3)) as { events: RecordedChange[] };
    assert.deepEqual(
      fromOldest.events.map((c) => c.event.seq),
      [4, 5, 6, 7, 8],
      'the ring holds the last 5',
    );
    assert.match((changes.resumeAfter(changes.eventId(2)) as { reset: string }).reset, /no longer kept/);
    assert.match((changes.resumeAfter(`zz-${5}`) as { reset: string }).reset, /restarted/);
    assert.match((changes.resumeAfter(changes.eventId(9)) as { reset: string }).reset, /never sent/);
    assert.match((changes.resumeAfter('garbage') as { reset: string }).reset, /not an event id/);
    assert.deepEqual((changes.resumeAfter(changes.lastEventId) as { events: unknown[] }).events, [], 'up to date: nothing missed');
  });

  it('builds the events of a burst together: one batch describer call for every VM created at once, in publish order', async () => {
    const changes = new ChangeFeed(undefined as unknown as Db, { coalesceMs: 10 });
    const calls: string[][] = [];
    changes.describeMany('vm', async (ids) => {
      calls.push([...ids]);
      return new Map(ids.map((id) => [id, { name: id, project: { id: 'prj-1', name: 'default' }, resource: { id } }]));
    });
    const seen: string[] = [];
    changes.subscribe(() => {
      throw new Error('a failing listener');
    });
    changes.subscribe((change) => seen.push(change.event.id));
    for (let i = 0; i < 50; i++) changes.publish('vm', 'created', `vm-${i}`);
    await changes.settled();
    assert.equal(calls.length, 1, `one call builds the burst (calls: ${calls.map((ids) => ids.length)})`);
    assert.deepEqual(
      seen,
      Array.from({ length: 50 }, (_, i) => `vm-${i}`),
      'every event reached the listener after the failing one, in publish order',
    );
  });
});
