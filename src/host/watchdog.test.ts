import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { firingReason } from './watchdog.ts';

const base = { now: 100_000, fedAt: 99_000, lastControlAt: 99_500, lastQuorumAt: 99_500, peerCount: 2, timeoutMs: 8_000 };

describe('the watchdog firing rule', () => {
  it('stays quiet while the agent feeds it and the control plane or a majority answers', () => {
    assert.equal(firingReason(base), undefined);
    assert.equal(firingReason({ ...base, lastControlAt: 50_000 }), undefined, 'control plane down, peers answer');
    assert.equal(firingReason({ ...base, lastQuorumAt: 50_000 }), undefined, 'peers gone, control plane answers');
    assert.equal(firingReason({ ...base, fedAt: undefined }), undefined, 'never armed by an agent');
  });

  it('fires when the agent stopped feeding it', () => {
    assert.match(firingReason({ ...base, fedAt: 91_000 }) ?? '', /agent has not fed the watchdog for 9000 ms/);
  });

  it('fires when the host lost both the control plane and most peers', () => {
    assert.match(
      firingReason({ ...base, lastControlAt: 91_000, lastQuorumAt: 90_000 }) ?? '',
      /control plane and most peer hosts have not answered for 9000 ms/,
    );
  });

  it('never fences a lone host, which has nowhere else to run its VMs', () => {
    assert.equal(firingReason({ ...base, lastControlAt: 0, lastQuorumAt: 0, peerCount: 0 }), undefined);
  });
});
