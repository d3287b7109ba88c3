import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { generateOpenApi, openApiPath } from '../../scripts/write-openapi.ts';
import { type FakeCluster, fakeCluster } from '../../test/helpers/fake-cluster.ts';
import type { Db } from '../state/database.ts';

describe('API (inject, no hosts)', () => {
  let cluster: FakeCluster;
  let db: Db;
  let app: FastifyInstance;
  let auth: FakeCluster['auth'];

  before(async () => {
    cluster = await fakeCluster();
    ({ db, auth } = cluster);
    app = await cluster.app();
  });
  after(() => cluster.close());

  it('needs a valid bearer token everywhere but the OpenAPI document and the agent routes', async () => {
    const missing = await app.inject({ method: 'GET', url: '/v1/vms' });
    assert.equal(missing.statusCode, 401);
    assert.equal(missing.json().code, 'AUTH_REQUIRED');
    assert.match(missing.json().message, /admin-token/);
    const wrong = await app.inject({ method: 'GET', url: '/v1/vms', headers: { authorization: 'Bearer nope' } });
    assert.equal(wrong.json().code, 'AUTH_INVALID_TOKEN');
    assert.equal((await app.inject({ method: 'GET', url: '/v1/openapi.json' })).statusCode, 200);
    assert.equal((await app.inject({ method: 'GET', url: '/v1/vms', headers: auth })).statusCode, 200);
  });

  it('refuses a wrong join token and reports from unknown hosts', async () => {
    const join = await app.inject({
      method: 'POST',
      url: '/v1/hosts/join',
      payload: {
        name: 'h1',
        joinToken: 'wrong',
        endpoint: 'unix:/x',
        agentToken: 'a'.repeat(40),
        accelerator: 'tcg',
        acceleratorReason: 'test',
        cpus: 2,
        memoryMb: 4096,
      },
    });
    assert.equal(join.statusCode, 401);
    const report = await app.inject({ method: 'POST', url: '/v1/hosts/h9/report', headers: { authorization: 'Bearer x' }, payload: { vms: [], full: true } });
    assert.equal(report.statusCode, 401);
    assert.equal(report.json().code, 'AUTH_INVALID_TOKEN');
    // A host that joined: only a hash of its token is stored, and a wrong token gets the same
    // answer as an unknown host, so host names cannot be probed.
    const agentToken = `nubis_agent_${'b'.repeat(43)}`;
    const joined = await app.inject({
      method: 'POST',
      url: '/v1/hosts/join',
      payload: {
        name: 'h2',
        joinToken: 'nubis_join_test',
        endpoint: 'unix:/x',
        agentToken,
        accelerator: 'tcg',
        acceleratorReason: 'test',
        cpus: 2,
        memoryMb: 4096,
      },
    });
    assert.equal(joined.statusCode, 200, joined.body);
    assert.match(joined.json().controlToken, /^nubis_ctl_/);
    const stored = JSON.stringify(await db.selectFrom('hosts').selectAll().execute());
    assert.ok(!stored.includes(agentToken) && !stored.includes(joined.json().controlToken), 'no credential is stored as it is');
    const wrongToken = await app.inject({
      method: 'POST',
      url: '/v1/hosts/h2/report',
      headers: { authorization: 'Bearer x' },
      payload: { vms: [], full: true },
    });
    assert.deepEqual([wrongToken.statusCode, wrongToken.json()], [report.statusCode, report.json()]);
    const right = await app.inject({
      method: 'POST',
      url: '/v1/hosts/h2/report',
      headers: { authorization: `Bearer ${agentToken}` },
      payload: { vms: [], full: true },
    });
    assert.equal(right.statusCode, 204);
    await db.deleteFrom('hosts').where('name', '=', 'h2').execute();
  });

  it('lets only its own origin (or no origin: the CLI) open a console', async () => {
    const foreign = await app.inject({
      method: 'GET',
      url: '/v1/vms/web1/console',
      headers: {
        ...auth,
        origin: 'http://evil.example',
        host: 'localhost:8600',
        connection: 'upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
      },
    });
    assert.equal(foreign.statusCode, 403, foreign.body);
    assert.equal(foreign.json().code, 'AUTH_FORBIDDEN');
  });

  it('names the offending field of invalid input and never answers 500', async () => {
    const cases: Array<[unknown, string, RegExp]> = [
      [{ name: 'a', image: 'tiny', memoryMb: 'lots' }, 'VALIDATION_FAILED', /memoryMb/],
      [{ name: 'a', image: 'tiny', memoryMb: 1 }, 'VALIDATION_FAILED', /memoryMb.*>= 64/],
      [{ image: 'tiny' }, 'VALIDATION_FAILED', /name/],
      [{ name: 'a', image: 'tiny', extra: 1 }, 'UNKNOWN_FIELD', /Unknown field extra/],
      [{ name: 'a', image: 'nope' }, 'IMAGE_NOT_FOUND', /No image nope/],
    ];
    for (const [payload, code, message] of cases) {
      const response = await app.inject({ method: 'POST', url: '/v1/vms', headers: auth, payload: payload as object });
      assert.ok(response.statusCode >= 400 && response.statusCode < 500, `${JSON.stringify(payload)} -> ${response.statusCode}`);
      assert.equal(response.json().code, code);
      assert.match(response.json().message, message);
    }
    const unknownVm = await app.inject({ method: 'POST', url: '/v1/vms/nope/stop', headers: auth });
    assert.equal(unknownVm.statusCode, 404);
    assert.equal(unknownVm.json().code, 'VM_NOT_FOUND');
    const unknownRoute = await app.inject({ method: 'GET', url: '/v1/nothing', headers: auth });
    assert.equal(unknownRoute.json().code, 'ROUTE_NOT_FOUND');
    assert.equal((await app.inject({ method: 'GET', url: '/v1/operations/op-x', headers: auth })).json().code, 'OPERATION_NOT_FOUND');
  });

  it('checks pool device strings and chunk sizes before the storage node sees them', async () => {
    const cases: Array<[string, unknown, RegExp]> = [
      [
        '/v1/pools',
        { name: 'p1', layout: 'raid1', devices: ['/srv/a.img', 'b.img'] },
        /^Invalid body\.devices\.1 "b\.img": give regular file or block device .*absolute path/,
      ],
      ['/v1/pools', { name: 'p1', layout: 'raid1', devices: ['/srv/../etc/shadow'] }, /"\/srv\/\.\.\/etc\/shadow"/],
      ['/v1/pools', { name: 'p1', layout: 'raid1', devices: ['/srv/a\u0000.img'] }, /devices\.0/],
      ['/v1/pools', { name: 'p1', layout: 'raid1', devices: [`/${'a'.repeat(5000)}`] }, /devices\.0/],
      ['/v1/pools', { name: 'p1', layout: 'raid1', devices: ['nbd://h/x?tls=1'] }, /devices\.0/],
      ['/v1/pools', { name: 'p1', layout: 'raid1', devices: ['/srv/a.img'], chunk: '1.5K' }, /chunk/],
      ['/v1/pools', { name: 'p1', layout: 'raid1', devices: ['/srv/a.img'], force: 'yes please' }, /force/],
      ['/v1/pools/p1/replace', { member: 0, device: '../d.img' }, /body\.device "\.\.\/d\.img"/],
    ];
    for (const [url, payload, message] of cases) {
      const response = await app.inject({ method: 'POST', url, headers: auth, payload: payload as object });
      assert.equal(response.statusCode, 400, `${JSON.stringify(payload).slice(0, 100)} -> ${response.body.slice(0, 300)}`);
      assert.equal(response.json().code, 'VALIDATION_FAILED');
      assert.match(response.json().message, message);
    }
  });

  it('refuses a VM when no host has joined, and an import of a file that is not there', async () => {
    const vm = await app.inject({ method: 'POST', url: '/v1/vms', headers: auth, payload: { name: 'a', image: 'tiny' } });
    assert.equal(vm.statusCode, 422);
    assert.equal(vm.json().code, 'NO_HOST_FITS');
    assert.match(vm.json().message, /No host has joined yet/);
    const image = await app.inject({ method: 'POST', url: '/v1/images', headers: auth, payload: { name: 'x', path: '/nonexistent.qcow2' } });
    assert.equal(image.statusCode, 400);
    assert.equal(image.json().code, 'IMAGE_INVALID');
    const list = await app.inject({ method: 'GET', url: '/v1/vms', headers: auth });
    assert.deepEqual(list.json(), [], 'nothing was created');
  });

  it('documents every route in the OpenAPI document, and the checked-in copy is current', async () => {
    const document = (await app.inject({ method: 'GET', url: '/v1/openapi.json' })).json() as { paths: Record<string, Record<string, unknown>> };
    const routes = app.printRoutes({ commonPrefix: false });
    for (const path of [
      '/v1/vms',
      '/v1/vms/{vm}',
      '/v1/vms/{vm}/console',
      '/v1/vms/{vm}/log',
      '/v1/operations/{id}/events',
      '/v1/hosts',
      '/v1/images',
      '/v1/status',
    ]) {
      assert.ok(document.paths[path], `${path} is documented`);
    }
    // Every registered /v1 route appears (fastify's :param is OpenAPI's {param}).
    const registered = [...routes.matchAll(/(\/v1\/[^\s(]*)/g)].map((m) => m[1].replace(/:(\w+)/g, '{$1}'));
    for (const path of registered) assert.ok(document.paths[path], `registered route ${path} is in the OpenAPI document`);
    assert.equal(readFileSync(openApiPath, 'utf8'), await generateOpenApi(), 'docs/openapi.json is stale: run npm run openapi');
  });
});
