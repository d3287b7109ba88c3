/**
 * What `nubis login` keeps: the API's URL, the session token and the CA, in the user's config
 * folder (`$XDG_CONFIG_HOME/nubis/credentials.json`, default `~/.config/nubis`), readable by the
 * user only. `nubis logout` revokes the token and removes the file.
 */
import { existsSync, readFileSync } from 'node:fs';
import { chmod, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

export interface StoredCredentials {
  url: string;
  token: string;
  user: string;
  ca?: string;
  expiresAt?: string;
}

/** The credentials file of this user (NUBIS_CONFIG moves the folder, for tests and several identities). */
export function credentialsPath(): string {
  const folder = process.env.NUBIS_CONFIG ?? join(process.env.XDG_CONFIG_HOME ?? join(homedir(), '.config'), 'nubis');
  return join(folder, 'credentials.json');
}

/** The stored credentials, or undefined when there are none (or they cannot be read). */
export function readCredentials(): StoredCredentials | undefined {
  const path = credentialsPath();
  if (!existsSync(path)) return undefined;
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as StoredCredentials;
  } catch {
    return undefined;
  }
}

/** Writes the credentials with mode 0600 in a folder of mode 0700, replacing the old file in one rename. */
export async function writeCredentials(credentials: StoredCredentials): Promise<string> {
  const path = credentialsPath();
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  await chmod(dirname(path), 0o700);
  const temporary = `${path}.tmp-${process.pid}`;
  await writeFile(temporary, `${JSON.stringify(credentials, null, 2)}\n`, { mode: 0o600 });
  await rename(temporary, path);
  return path;
}

export async function removeCredentials(): Promise<void> {
  await rm(credentialsPath(), { force: true });
}
