/** The one check function: what a grant reaches, how a token narrows it, and the reason it gives. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { authorize, type Grant, type Principal, projectsWith } from './authorize.ts';

const web = { project: { id: 'prj-web', name: 'web' } };
const shop = { project: { id: 'prj-shop', name: 'shop' } };

function principal(grants: Grant[], limits: Partial<Pick<Principal, 'tokenProjectId' | 'tokenRole'>> = {}): Principal {
  return { userId: 'u1', userName: 'alice', tokenId: 't1', tokenName: 'ci', grants, tokenProjectId: null, tokenRole: null, ...limits };
}
const grant = (role: string, projectId: string | null, permissions: string[]): Grant => ({ role, projectId, permissions: new Set(permissions), via: 'user' });

describe('authorize', () => {
  it('lets a platform grant reach every project and the platform', () => {
    const admin = principal([grant('admin', null, ['*'])]);
    assert.equal(authorize(admin, 'vm.create', web).allowed, true);
    assert.equal(authorize(admin, 'host.evacuate', 'platform').allowed, true);
    assert.equal(projectsWith(admin, 'vm.read'), 'all');
  });

  it('keeps a project grant in its project, and never lets it grant a platform permission', () => {
    const custom = principal([grant('weird', 'prj-web', ['vm.create', 'host.evacuate'])]);
    assert.equal(authorize(custom, 'vm.create', web).allowed, true);
    const elsewhere = authorize(custom, 'vm.create', shop);
    assert.equal(elsewhere.allowed, false);
    assert.equal(
      elsewhere.reason,
      'alice lacks permission vm.create on project shop (no role held there); ask an owner of the project or a platform admin to grant a role that has it',
    );
    assert.equal(authorize(custom, 'host.evacuate', 'platform').allowed, false);
    assert.equal(authorize(custom, 'vm.create', 'platform').allowed, false, 'a project permission "everywhere" needs a platform grant');
    assert.deepEqual(projectsWith(custom, 'vm.create'), ['prj-web']);
  });

  it('narrows by the token: its project, then its role', () => {
    const owner = [grant('owner', 'prj-web', ['vm.create', 'vm.read']), grant('owner', 'prj-shop', ['vm.create', 'vm.read'])];
    const limited = principal(owner, { tokenProjectId: 'prj-web' });
    assert.equal(authorize(limited, 'vm.create', web).allowed, true);
    assert.match(authorize(limited, 'vm.create', shop).reason, /Token ci is limited to one project/);
    assert.deepEqual(projectsWith(limited, 'vm.read'), ['prj-web']);
    const reader = principal(owner, { tokenRole: { name: 'reader', permissions: new Set(['vm.read']) } });
    assert.equal(authorize(reader, 'vm.read', shop).allowed, true);
    assert.equal(authorize(reader, 'vm.create', web).reason, 'Token ci is limited to role reader, which lacks vm.create');
    assert.deepEqual(projectsWith(reader, 'vm.create'), []);
  });

  it('names the roles held where a permission is missing', () => {
    const reader = principal([grant('reader', 'prj-web', ['vm.read'])]);
    assert.match(authorize(reader, 'vm.console', web).reason, /lacks permission vm\.console on project web \(roles held there: reader\)/);
    assert.match(authorize(reader, 'user.manage', 'platform').reason, /ask a platform admin/);
  });
});
