/**
 * The first start, and every start after: the built-in roles as this release defines them, and
 * a first platform admin. On a new data folder the user `admin` is made with the platform role
 * `admin` and a token whose secret is the file admin-token (mode 0600); an older data folder's
 * admin token was turned into that user's token by the schema migration.
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { newId, newSecret } from '../core/ids.ts';
import type { Db } from '../state/database.ts';
import { RoleStore } from './roles.ts';
import { sha256Hex } from './tokens.ts';

/** Writes the built-in roles, and makes the first admin (user, binding, token file) when there is no user yet. */
export async function bootstrapAccess(db: Db, adminTokenPath: string): Promise<void> {
  const roles = new RoleStore(db);
  await roles.ensureBuiltin();
  if (await db.selectFrom('users').select('id').executeTakeFirst()) return;
  const secret = existsSync(adminTokenPath) ? (await readFile(adminTokenPath, 'utf8')).trim() : newSecret('nubis_admin');
  const now = new Date().toISOString();
  await db.transaction().execute(async (trx) => {
    await trx
      .insertInto('users')
      .values({
        id: 'usr-admin',
        name: 'admin',
        password_hash: null,
        totp_secret: null,
        totp_enabled: 0,
        totp_last_step: null,
        oidc_subject: null,
        source: 'local',
        created_at: now,
      })
      .execute();
    await trx
      .insertInto('role_bindings')
      .values({ id: newId('bnd'), subject_type: 'user', subject: 'usr-admin', role_id: 'role-admin', project_id: null, created_at: now })
      .execute();
    await trx.deleteFrom('tokens').where('secret_sha256', '=', sha256Hex(secret)).execute();
    await trx
      .insertInto('tokens')
      .values({
        id: newId('tok'),
        name: 'admin',
        secret_sha256: sha256Hex(secret),
        role: 'user',
        created_at: now,
        user_id: 'usr-admin',
        kind: 'api',
        project_id: null,
        role_id: null,
        groups: null,
        expires_at: null,
        revoked_at: null,
        last_used_at: null,
      })
      .execute();
  });
  if (!existsSync(adminTokenPath)) await writeFile(adminTokenPath, `${secret}\n`, { mode: 0o600 });
}
