/**
 * A client of the backup store's API (store/store-app.ts) on its unix socket: JSON calls through
 * core/http-json.ts, and sealed chunks as raw bytes. Used by the host agents (chunks up and down)
 * and by the control plane (listing, checking, collecting).
 */
import { request } from 'node:http';
import { NubisError } from '../core/errors.ts';
import { requestJson } from '../core/http-json.ts';
import type { StoreCheck, StoredBackup } from './store/chunk-store.ts';
import type { ChallengeJson, ProofJson } from './proof/por-wire.ts';

const CHUNK_TIMEOUT_MS = 120_000;

export class BackupStoreClient {
  readonly #socketPath: string;

  constructor(socketPath: string) {
    this.#socketPath = socketPath;
  }

  #json<T>(method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown, timeoutMs = 60_000): Promise<T> {
    return requestJson<T>(`unix:${this.#socketPath}`, { method, path, ...(body === undefined ? {} : { body }), timeoutMs }).catch((error: unknown) => {
      throw storeError(error, this.#socketPath);
    });
  }

  /** Which of `ids` the store has not got (asking also keeps the others safe from a collection for a while). */
  async missing(ids: string[]): Promise<string[]> {
    return (await this.#json<{ missing: string[] }>('POST', '/chunks/missing', { ids })).missing;
  }

  putChunk(id: string, sealed: Buffer): Promise<void> {
    return this.#bytes('PUT', `/chunks/${id}`, sealed).then(() => undefined);
  }

  putTags(id: string, tags: Buffer): Promise<void> {
    return this.#bytes('PUT', `/chunks/${id}/tags`, tags).then(() => undefined);
  }

  putCatalog(id: string, catalog: unknown): Promise<void> {
    return this.#json('PUT', `/backups/${id}/catalog`, catalog, 600_000);
  }

  /** The store's proof that it holds the challenged blocks (backup/proof/por-wire.ts forms). */
  async challenge(challenge: ChallengeJson): Promise<ProofJson> {
    return (await this.#json<{ proof: ProofJson }>('POST', '/challenge', { challenge }, 300_000)).proof;
  }

  /** The encrypted catalog entries each backup holds under its token. */
  async search(queries: Array<{ backup: string; token: string }>): Promise<Array<{ backup: string; values: string[] }>> {
    return (await this.#json<{ results: Array<{ backup: string; values: string[] }> }>('POST', '/search', { queries }, 300_000)).results;
  }

  getChunk(id: string): Promise<Buffer> {
    return this.#bytes('GET', `/chunks/${id}`);
  }

  commit(id: string, record: { createdAt: string; chunks: string[]; manifest: Buffer }): Promise<StoredBackup> {
    return this.#json('PUT', `/backups/${id}`, { ...record, manifest: record.manifest.toString('base64') });
  }

  async backup(id: string): Promise<StoredBackup & { manifest: Buffer }> {
    const found = await this.#json<StoredBackup & { manifest: string }>('GET', `/backups/${id}`);
    return { ...found, manifest: Buffer.from(found.manifest, 'base64') };
  }

  async list(): Promise<StoredBackup[]> {
    return (await this.#json<{ backups: StoredBackup[] }>('GET', '/backups')).backups;
  }

  remove(id: string): Promise<void> {
    return this.#json('DELETE', `/backups/${id}`);
  }

  check(backup?: string): Promise<StoreCheck> {
    return this.#json('POST', '/check', backup ? { backup } : {}, 600_000);
  }

  collect(graceSeconds: number): Promise<{ removedChunks: number; freedBytes: number; keptChunks: number }> {
    return this.#json('POST', '/collect', { graceSeconds }, 600_000);
  }

  #bytes(method: 'GET' | 'PUT', path: string, body?: Buffer): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const req = request(
        {
          socketPath: this.#socketPath,
          method,
          path,
          timeout: CHUNK_TIMEOUT_MS,
          headers: body ? { 'content-type': 'application/octet-stream', 'content-length': body.length } : {},
        },
        (res) => {
          const parts: Buffer[] = [];
          res.on('data', (part: Buffer) => parts.push(part));
          res.on('error', reject);
          res.on('end', () => {
            const bytes = Buffer.concat(parts);
            if ((res.statusCode ?? 500) < 400) return resolve(bytes);
            let wire: { code?: string; message?: string; details?: Record<string, unknown> } = {};
            try {
              wire = JSON.parse(bytes.toString('utf8')) as typeof wire;
            } catch {}
            reject(
              new NubisError(wire.code ?? 'BACKUP_STORE_FAILED', wire.message ?? `The backup store answered ${res.statusCode} to ${method} ${path}`, {
                details: wire.details,
              }),
            );
          });
        },
      );
      req.on('timeout', () =>
        req.destroy(new NubisError('BACKUP_STORE_UNREACHABLE', `The backup store did not answer ${method} ${path} within ${CHUNK_TIMEOUT_MS / 1000} s`)),
      );
      req.on('error', (error) => reject(storeError(error, this.#socketPath)));
      req.end(body);
    });
  }
}

/** A store that cannot be reached is named as such, with what to do. */
function storeError(error: unknown, socketPath: string): unknown {
  if (error instanceof NubisError && !['HTTP_UNREACHABLE', 'HTTP_TIMEOUT'].includes(error.code)) return error;
  return new NubisError(
    'BACKUP_STORE_UNREACHABLE',
    `The backup store at ${socketPath} does not answer (${error instanceof Error ? error.message : String(error)}); is it running? (nubis up starts it)`,
    { cause: error },
  );
}
