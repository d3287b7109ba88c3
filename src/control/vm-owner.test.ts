import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CONFLICTS, VmOwner } from './vm-owner.ts';

/** A promise and the function that settles it. */
function gate(): { opened: Promise<void>; open: () => void } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { opened, open };
}

describe('VmOwner: one owner per VM', () => {
  it('refuses what a migration in progress meets, naming the migration and its operation', () => {
    const owner = new VmOwner();
    const migration = owner.claim('vm-1', 'migrate', 'web1');
    migration.setOperation('op-7');
    for (const action of ['stop', 'delete', 'attach', 'migrate', 'reboot', 'snapshot'] as const) {
      assert.throws(
        () => owner.claim('vm-1', action, 'web1'),
        (error: Error & { code?: string; details?: Record<string, unknown> }) => {
          assert.equal(error.code, 'VM_BUSY');
          assert.match(error.message, /web1 is busy with migrate \(operation op-7\)/);
          assert.deepEqual(error.details, { vm: 'web1', inProgress: 'migrate', operationId: 'op-7', requested: action });
          return true;
        },
      );
    }
    // Another VM is not affected, and the VM is free again once the migration lets go.
    owner.claim('vm-2', 'stop').release();
    migration.release();
    assert.equal(owner.busy('vm-1'), false);
    owner.claim('vm-1', 'stop').release();
  });

  it('gives exactly one of two concurrent migrations the VM', () => {
    const owner = new VmOwner();
    const outcomes = ['migrate', 'migrate'].map((action) => {
      try {
        owner.claim('vm-1', action as 'migrate');
        return 'claimed';
      } catch (error) {
        return (error as { code: string }).code;
      }
    });
    assert.deepEqual(outcomes, ['claimed', 'VM_BUSY']);
  });

  it('queues lifecycle and disk actions one after another in the order asked, and a delete after a create', async () => {
    const owner = new VmOwner();
    const order: string[] = [];
    const first = gate();
    const create = owner.claim('vm-1', 'create');
    const creating = create.run(async () => {
      await first.opened;
      order.push('create');
    });
    assert.throws(() => owner.claim('vm-1', 'start'), /busy with create/);
    const deleting = owner.claim('vm-1', 'delete').run(async () => void order.push('delete'));
    assert.throws(() => owner.claim('vm-1', 'attach'), /busy with (create|delete)/);
    first.open();
    await Promise.all([creating, deleting]);
    assert.deepEqual(order, ['create', 'delete']);

    const stop = owner.claim('vm-2', 'stop');
    const attach = owner.claim('vm-2', 'attach');
    assert.throws(() => owner.claim('vm-2', 'migrate'), /busy with stop/);
    const runs = [attach.run(async () => void order.push('attach')), stop.run(async () => void order.push('stop'))];
    await Promise.all(runs);
    assert.deepEqual(order.slice(2), ['attach', 'stop'], 'turns follow the order in which the work was handed over');
    assert.equal(owner.busy('vm-2'), false);
  });

  it('frees the VM when the work fails', async () => {
    const owner = new VmOwner();
    await assert.rejects(
      owner.claim('vm-1', 'stop').run(async () => {
        throw new Error('agent gone');
      }),
    );
    assert.equal(owner.busy('vm-1'), false);
  });

  it('has a rule for every pair of actions', () => {
    const actions = Object.keys(CONFLICTS);
    for (const inProgress of actions) assert.deepEqual(Object.keys(CONFLICTS[inProgress as keyof typeof CONFLICTS]).sort(), [...actions].sort());
  });
});
