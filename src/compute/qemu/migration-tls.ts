/**
 * TLS for a live migration's stream, between the two QEMUs themselves (QEMU's `tls-creds`
 * migration parameter): the stream goes straight from the source's QEMU to the destination's over
 * the underlay, with no relay of Nubis's in between, so only the two QEMUs hold the keys.
 *
 * Each migration brings certificates of its own, issued by the Nubis CA for this VM and this
 * migration (control plane, migration-service.ts): no QEMU ever holds a key of its host, or of
 * another VM. QEMU loads x509 credentials when the object is created (crypto/tlscredsx509.c: the
 * `complete` hook calls `qcrypto_tls_creds_x509_load`, keeping them in gnutls credentials in
 * memory), so the files exist only around `object-add`: written into a folder of the VM's folder
 * (root's, so QEMU's user cannot swap the folder for a link while root writes), readable by
 * QEMU's user alone (0600), and removed right after. Post-copy's preempt channel and a resumed
 * post-copy use the same credentials object.
 */
import { randomBytes } from 'node:crypto';
import { chown, lstat, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { QmpClient } from '../qmp/qmp-client.ts';

/** The credentials object of a migration, and the authorisation of its one client (destination). */
export const MIGRATION_TLS_OBJECT = 'migration-tls';
export const MIGRATION_AUTHZ_OBJECT = 'migration-authz';

/** One end's credentials for a migration over TLS, PEM-encoded. */
export interface MigrationTlsCredentials {
  /** `server`: the destination, which listens; `client`: the source. */
  endpoint: 'server' | 'client';
  caPem: string;
  certPem: string;
  keyPem: string;
  /**
   * The peer this end accepts. Server: the distinguished name of the source's certificate
   * (QEMU's `authz-simple` identity, e.g. `CN=mig-123-source`), so no other certificate of the CA
   * (a VM's storage certificate, say) can feed this VM a stream. Client: the name the
   * destination's certificate must carry (QEMU's `tls-hostname`, its underlay address).
   */
  peer: string;
}

/**
 * Loads `tls` into QEMU and makes the next migration (or incoming migration) use it; without
 * `tls`, the next migration runs in plaintext (QEMU keeps migration parameters from an earlier
 * migration, so they are always set). `vmDir` is the VM's folder; its `run/` belongs to QEMU's user.
 */
export async function loadMigrationTls(qmp: QmpClient, vmDir: string, tls: MigrationTlsCredentials | undefined): Promise<void> {
  // Credentials of an earlier migration of this QEMU (a source that migrated before) go first.
  for (const id of [MIGRATION_TLS_OBJECT, MIGRATION_AUTHZ_OBJECT]) await qmp.execute('object-del', { id }).catch(() => undefined);
  if (!tls) {
    await qmp.execute('migrate-set-parameters', { 'tls-creds': '', 'tls-hostname': '', 'tls-authz': '' });
    return;
  }
  const owner = await lstat(join(vmDir, 'run'));
  const dir = join(vmDir, `migration-tls-${randomBytes(6).toString('hex')}`);
  await mkdir(dir, { mode: 0o700 });
  try {
    const prefix = tls.endpoint === 'server' ? 'server' : 'client';
    for (const [name, text] of [
      ['ca-cert.pem', tls.caPem],
      [`${prefix}-cert.pem`, tls.certPem],
      [`${prefix}-key.pem`, tls.keyPem],
    ] as const) {
      // 'wx': a new file, never through a link; QEMU's user reads it, nobody else.
      await writeFile(join(dir, name), text, { mode: 0o600, flag: 'wx' });
      await chown(join(dir, name), owner.uid, owner.gid);
    }
    await chown(dir, owner.uid, owner.gid);
    await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: MIGRATION_TLS_OBJECT, endpoint: tls.endpoint, dir, 'verify-peer': true });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  if (tls.endpoint === 'server') {
    await qmp.execute('object-add', { 'qom-type': 'authz-simple', id: MIGRATION_AUTHZ_OBJECT, identity: tls.peer });
    await qmp.execute('migrate-set-parameters', { 'tls-creds': MIGRATION_TLS_OBJECT, 'tls-authz': MIGRATION_AUTHZ_OBJECT, 'tls-hostname': '' });
  } else {
    await qmp.execute('migrate-set-parameters', { 'tls-creds': MIGRATION_TLS_OBJECT, 'tls-hostname': tls.peer, 'tls-authz': '' });
  }
}
