import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isNubisError } from '../core/errors.ts';
import { parseVmStorageClientName, vmStorageClientName } from '../storage/vm-socket-checks.ts';
import { VM_UID_FIRST } from '../compute/vm-user.ts';
import { checkMigrationTls, issueMigrationTls, type IssueCertificate } from './migration-tls.ts';

describe('migration TLS rules', () => {
  it('follows the request, refuses plaintext when the cluster requires TLS, and TLS with mirrored disks', () => {
    assert.equal(checkMigrationTls('a1', undefined, 'optional', false), false);
    assert.equal(checkMigrationTls('a1', true, 'optional', false), true);
    assert.equal(checkMigrationTls('a1', true, 'required', false), true);
    for (const asked of [undefined, false])
      assert.throws(
        () => checkMigrationTls('a1', asked, 'required', false),
        (error) => isNubisError(error, 'MIGRATION_TLS_REQUIRED') && /VM a1 with --tls/.test((error as Error).message),
      );
    assert.throws(
      () => checkMigrationTls('a1', true, 'optional', true),
      (error) => isNubisError(error, 'MIGRATION_TLS_UNSUPPORTED'),
    );
    assert.equal(checkMigrationTls('a1', false, 'optional', true), false, 'a mirrored VM migrates in plaintext when allowed');
  });

  it("gives each end its own certificate: the destination's for its address, the source's as the one admitted identity", async () => {
    const asked: Array<Parameters<IssueCertificate>[0]> = [];
    const issue: IssueCertificate = async (request) => {
      asked.push(request);
      return { certPem: `cert ${request.commonName}`, keyPem: `key ${request.commonName}`, caPem: 'ca' };
    };
    const tls = await issueMigrationTls(issue, 'mig-0123456789ab', '172.31.0.3');
    assert.deepEqual(asked, [
      { commonName: 'mig-0123456789ab-destination', purposes: ['server'], names: ['172.31.0.3'], days: 1 },
      { commonName: 'mig-0123456789ab-source', purposes: ['client'], days: 1 },
    ]);
    assert.deepEqual(
      [tls.destination.endpoint, tls.destination.certPem, tls.destination.peer],
      ['server', 'cert mig-0123456789ab-destination', 'CN=mig-0123456789ab-source'],
    );
    assert.deepEqual([tls.source.endpoint, tls.source.keyPem, tls.source.peer], ['client', 'key mig-0123456789ab-source', '172.31.0.3']);
  });

  it("names a VM's storage client vm-<uid>.<host> and reads only such names back", () => {
    const uid = VM_UID_FIRST + 7;
    assert.equal(vmStorageClientName('host-1', uid), `vm-${uid}.host-1`);
    assert.deepEqual(parseVmStorageClientName(`vm-${uid}.host-1`), { host: 'host-1', uid });
    for (const name of [`vm-${uid}.host-1.evil`, `vm-${uid}`, `vm-1.host-1`, `vm-${uid}.Host-1`, `vm-${uid}.host-1\n`, `mig-1-source`, ''])
      assert.equal(parseVmStorageClientName(name), undefined, JSON.stringify(name));
  });
});
