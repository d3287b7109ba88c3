import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { diffFloodEntries } from './overlay.ts';

describe('diffFloodEntries', () => {
  it('adds missing peers and removes stale ones', () => {
    assert.deepEqual(diffFloodEntries(['172.31.0.12', '172.31.0.13'], ['172.31.0.13', '172.31.0.14']), {
      add: ['172.31.0.14'],
      remove: ['172.31.0.12'],
    });
  });

  it('changes nothing when in step, whatever the order and duplicates', () => {
    assert.deepEqual(diffFloodEntries(['a', 'b'], ['b', 'a', 'b']), { add: [], remove: [] });
  });

  it('empties and fills the list', () => {
    assert.deepEqual(diffFloodEntries(['a', 'b'], []), { add: [], remove: ['a', 'b'] });
    assert.deepEqual(diffFloodEntries([], ['a']), { add: ['a'], remove: [] });
  });
});
