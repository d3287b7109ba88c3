/**
 * Whether a live migration's stream runs over TLS, and its certificates. The stream goes straight
 * from the source's QEMU to the destination's on the underlay (stream-ports.ts: the destination's
 * QEMU listens itself; Nubis relays none of it), so the TLS is end to end between the two QEMUs
 * (QEMU's `tls-creds`; compute/qemu/migration-tls.ts loads them).
 *
 * Every migration gets two certificates of the Nubis CA of its own, lasting a day: the
 * destination's (serverAuth, for its underlay address, which the source checks as
 * `tls-hostname`) and the source's (clientAuth, `CN=<migration id>-source`, the one identity the
 * destination's `authz-simple` admits). No host key is ever handed to a VM's QEMU, and no
 * certificate of one migration opens another (nor does a VM's storage certificate, though it
 * comes from the same CA).
 */
import type { MigrationTlsCredentials } from '../compute/qemu/migration-tls.ts';
import { NubisError } from '../core/errors.ts';
import type { Db } from '../state/database.ts';

/**
 * Issues a certificate of the Nubis CA: app/tls.ts `issueNubisCertificate` over the data folder
 * (its request and answer, spelled out here so this folder does not import the app's).
 */
export type IssueCertificate = (request: {
  commonName: string;
  purposes: Array<'server' | 'client'>;
  names?: string[];
  days: number;
}) => Promise<{ certPem: string; keyPem: string; caPem: string }>;

/** The cluster's rule for migration TLS: `required` refuses a migration without it. */
export type MigrationTlsPolicy = 'optional' | 'required';

/** The cluster's migration TLS policy (`nubis cluster set --migration-tls`). */
export async function migrationTlsPolicy(db: Db): Promise<MigrationTlsPolicy> {
  const row = await db.selectFrom('cluster_settings').select('migration_tls').where('id', '=', 'cluster').executeTakeFirst();
  return row?.migration_tls === 'required' ? 'required' : 'optional';
}

/**
 * Whether this migration runs over TLS: as asked, and refused (`MIGRATION_TLS_REQUIRED`) when
 * the cluster requires TLS and it was not asked for, or (`MIGRATION_TLS_UNSUPPORTED`) when the
 * VM has disks copied alongside the stream (their NBD mirror would still run in plaintext).
 */
export function checkMigrationTls(vmName: string, asked: boolean | undefined, policy: MigrationTlsPolicy, mirrored: boolean): boolean {
  if (policy === 'required' && asked !== true)
    throw new NubisError(
      'MIGRATION_TLS_REQUIRED',
      `This cluster requires live migrations over TLS (migrationTls: required); migrate VM ${vmName} with --tls (API: "tls": true), or allow plaintext with: nubis cluster set --migration-tls optional`,
    );
  if (asked === true && mirrored)
    throw new NubisError(
      'MIGRATION_TLS_UNSUPPORTED',
      `VM ${vmName} has disks that are copied to the destination with the migration (dir-pool volumes, or the overlay of a disk image), and that copy cannot run over TLS yet; migrate it without --tls, or keep its disks on a storage node`,
    );
  return asked === true;
}

/** Issues both ends' credentials for migration `migrationId` to `destinationAddress`. */
export async function issueMigrationTls(
  issue: IssueCertificate,
  migrationId: string,
  destinationAddress: string,
): Promise<{ source: MigrationTlsCredentials; destination: MigrationTlsCredentials }> {
  const clientName = `${migrationId}-source`;
  const server = await issue({ commonName: `${migrationId}-destination`, purposes: ['server'], names: [destinationAddress], days: 1 });
  const client = await issue({ commonName: clientName, purposes: ['client'], days: 1 });
  return {
    // QEMU's authz identity is the DN as gnutls prints it; the certificate's subject is its CN alone.
    destination: { endpoint: 'server', caPem: server.caPem, certPem: server.certPem, keyPem: server.keyPem, peer: `CN=${clientName}` },
    source: { endpoint: 'client', caPem: client.caPem, certPem: client.certPem, keyPem: client.keyPem, peer: destinationAddress },
  };
}
