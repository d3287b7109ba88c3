import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import { ensureNubisCa } from '../app/tls.ts';
import { isNubisError } from '../core/errors.ts';
import { dataPaths } from '../core/paths.ts';
import { ApiClient, resolveApiTarget } from './api-client.ts';

describe('the CLI over HTTPS', () => {
  // One folder per run, removed also when a test fails.
  const dir = mkdtempSync(join(tmpdir(), `nubis-api-fetch-${process.pid}-`));
  const dataDir = join(dir, 'data');
  let app: FastifyInstance;
  let url: string;
  let caPath: string;
  before(async () => {
    const files = await ensureNubisCa(dataDir, []);
    caPath = files.caPath!;
    app = Fastify({ https: { cert: readFileSync(files.certPath), key: readFileSync(files.keyPath) } });
    app.get('/v1/status', async (request) => ({ version: 'test', auth: request.headers.authorization }));
    app.get('/v1/operations/op1/events', (_request, reply) => {
      // An operation's event stream as the API sends it: progress events, then the end.
      reply.raw.writeHead(200, { 'content-type': 'text/event-stream' });
      reply.raw.write(`event: progress\ndata: ${JSON.stringify({ stage: 'copy', percent: 50 })}\n\n`);
      reply.raw.end(`event: end\ndata: ${JSON.stringify({ id: 'op1', status: 'succeeded' })}\n\n`);
    });
    url = await app.listen({ host: '127.0.0.1', port: 0 });
    mkdirSync(dataDir, { recursive: true });
    writeFileSync(dataPaths(dataDir).apiInfo, JSON.stringify({ url, caPath }));
    writeFileSync(dataPaths(dataDir).adminToken, 'nubis_admin_test\n');
  });
  after(async () => {
    await app?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('trusts the Nubis CA named in the data folder, for requests and for an event stream', async () => {
    const target = resolveApiTarget(dataDir);
    assert.deepEqual(target, { url, token: 'nubis_admin_test', ca: caPath });
    const api = new ApiClient(target);
    assert.deepEqual(await api.request('GET', '/v1/status'), { version: 'test', auth: 'Bearer nubis_admin_test' });
    const events: unknown[] = [];
    const final = await api.follow('op1', (event) => events.push(event));
    assert.deepEqual(events, [{ stage: 'copy', percent: 50 }]);
    assert.deepEqual(final, { id: 'op1', status: 'succeeded' });
  });

  it('takes --ca over the data folder, and not the data folder CA for another URL', () => {
    assert.equal(resolveApiTarget(dataDir, { ca: '/etc/company-ca.pem' }).ca, '/etc/company-ca.pem');
    assert.equal(resolveApiTarget(dataDir, { url: 'https://elsewhere.example:8600' }).ca, undefined);
  });

  it('refuses the server without the CA and says how to trust it', async () => {
    const api = new ApiClient({ url, token: 'nubis_admin_test' });
    await assert.rejects(
      api.request('GET', '/v1/status'),
      (error) =>
        isNubisError(error, 'API_UNREACHABLE') &&
        ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'SELF_SIGNED_CERT_IN_CHAIN'].includes(String(error.details?.tlsError)) &&
        error.message.includes('--ca'),
    );
  });

  it('names a CA file it cannot read', () => {
    assert.throws(
      () => new ApiClient({ url, token: 't', ca: join(dir, 'missing.pem') }),
      (error) => isNubisError(error, 'TLS_FILE_UNREADABLE'),
    );
  });
});
