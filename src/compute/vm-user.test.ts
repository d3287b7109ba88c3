import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isVmUid, VM_UID_FIRST, VM_UID_LAST, VMS_GID, vmUserOf } from './vm-user.ts';

describe('VM users', () => {
  it('runs a VM as the uid its spec names, with a group of the same number', () => {
    assert.deepEqual(vmUserOf({ id: 'vm-a', unixUid: VM_UID_FIRST + 7 }), { uid: VM_UID_FIRST + 7, gid: VM_UID_FIRST + 7 });
  });

  it('refuses a uid that is no VM uid: root, a login account, a system user', () => {
    for (const uid of [0, 1000, 65534, VM_UID_FIRST - 1, VMS_GID, 2 ** 31, -5, 1.5])
      assert.throws(() => vmUserOf({ id: 'vm-a', unixUid: uid }), /is not a VM uid/, String(uid));
  });

  it('gives a spec from before VM users a stable uid of the VM range, outside the counted one', () => {
    const first = vmUserOf({ id: 'vm-01hzzzzzzzzzzzzzzzzzzzzzzz' });
    assert.deepEqual(vmUserOf({ id: 'vm-01hzzzzzzzzzzzzzzzzzzzzzzz' }), first);
    assert.ok(first.uid > VM_UID_LAST && isVmUid(first.uid) && first.uid < VMS_GID, String(first.uid));
    assert.notEqual(vmUserOf({ id: 'vm-other' }).uid, first.uid);
  });
});
