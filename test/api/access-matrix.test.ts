/**
 * The authorization matrix: every route of the OpenAPI document x every built-in role (and a
 * user with none) x acting in the role's own project, in another project, and on the platform,
 * against the table below. The test fails on any unexpected allow or deny and on any route the
 * table lacks, so a new route cannot ship unchecked.
 *
 * Each cell is one request through the real API (inject) with a token of that role's user. A
 * request counts as denied when it is answered 401 or 403, as allowed otherwise (200, or a 400/404
 * /409 that shows the check passed). Requests are made harmless where they could change the
 * fixtures: an unknown query field or body field fails validation, which runs after the check.
 *
 * Table: per route, one triplet per role in the order of ROLES; each triplet is
 * [own project][other project][platform]: A allowed, D denied, - not a context of this route.
 * Regenerate a draft with MATRIX_PRINT=1 (then read every changed line before checking it in).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import type { Principal } from '../../src/access/authorize.ts';
import { type FakeCluster, fakeCluster } from '../helpers/fake-cluster.ts';

const ROLES = ['admin', 'owner', 'operator', 'member', 'reader', 'console', 'none'] as const;
type Role = (typeof ROLES)[number];

// prettier-ignore
const EXPECTED: Record<string, string> = {
  getOpenApiDocument: '--A --A --A --A --A --A --A',
  getStatus: '--A --D --D --D --D --D --D',
  getMetrics: '--A --D --D --D --D --D --D',
  listProjects: '--A --A --A --A --A --A --A',
  createProject: '--A --D --D --D --D --D --D',
  getProject: 'AA- AD- AD- AD- AD- DD- DD-',
  setProjectQuota: '--A --D --D --D --D --D --D',
  setProjectRequirements: '--A --D --D --D --D --D --D',
  setProjectTrustedLaunch: '--A --D --D --D --D --D --D',
  listHosts: '--A --D --D --D --D --D --D',
  getHost: '--A --D --D --D --D --D --D',
  updateHost: '--A --D --D --D --D --D --D',
  evacuateHost: '--A --D --D --D --D --D --D',
  restoreHost: '--A --D --D --D --D --D --D',
  getCluster: '--A --D --D --D --D --D --D',
  updateCluster: '--A --D --D --D --D --D --D',
  balanceCluster: '--A --D --D --D --D --D --D',
  joinHost: '--D --D --D --D --D --D --D',
  reportHostVms: '--D --D --D --D --D --D --D',
  hostHeartbeat: '--D --D --D --D --D --D --D',
  reportHostUsage: '--D --D --D --D --D --D --D',
  getHostUsage: '--A --D --D --D --D --D --D',
  getHaStatus: '--A --D --D --D --D --D --D',
  listHaGroups: '--A --D --D --D --D --D --D',
  createHaGroup: '--A --D --D --D --D --D --D',
  deleteHaGroup: '--A --D --D --D --D --D --D',
  listImages: '--A --A --A --A --A --A --A',
  importImage: '--A --D --D --D --D --D --D',
  listVms: 'AAA ADA ADA ADA ADA ADA DDA',
  createVm: 'AA- AD- AD- AD- DD- DD- DD-',
  getVm: 'AA- AD- AD- AD- AD- AD- DD-',
  getVmAttestation: 'AA- AD- AD- AD- AD- AD- DD-',
  verifyVmQuote: 'AA- AD- AD- AD- AD- AD- DD-',
  getVmUsage: 'AA- AD- AD- AD- AD- AD- DD-',
  deleteVm: 'AA- AD- AD- AD- DD- DD- DD-',
  updateVm: 'AA- AD- AD- AD- DD- DD- DD-',
  startVm: 'AA- AD- AD- AD- DD- DD- DD-',
  stopVm: 'AA- AD- AD- AD- DD- DD- DD-',
  rebootVm: 'AA- AD- AD- AD- DD- DD- DD-',
  pauseVm: 'AA- AD- AD- AD- DD- DD- DD-',
  resumeVm: 'AA- AD- AD- AD- DD- DD- DD-',
  migrateVm: 'AA- AD- AD- DD- DD- DD- DD-',
  listVmMigrations: 'AA- AD- AD- AD- AD- AD- DD-',
  planVm: 'AA- AD- AD- AD- DD- DD- DD-',
  getVmPlacement: 'AA- AD- AD- AD- AD- AD- DD-',
  explainSchedule: '--A --D --D --D --D --D --D',
  listPlacementGroups: 'AAA ADA ADA ADA ADA DDA DDA',
  createPlacementGroup: 'AA- AD- AD- AD- DD- DD- DD-',
  getPlacementGroup: 'AA- AD- AD- AD- AD- DD- DD-',
  deletePlacementGroup: 'AA- AD- AD- AD- DD- DD- DD-',
  attachVmDisk: 'AA- AD- AD- AD- DD- DD- DD-',
  detachVmDisk: 'AA- AD- AD- AD- DD- DD- DD-',
  getVmLog: 'AA- AD- AD- AD- AD- DD- DD-',
  listVmSnapshots: 'AA- AD- AD- AD- AD- AD- DD-',
  createVmSnapshot: 'AA- AD- AD- AD- DD- DD- DD-',
  deleteVmSnapshot: 'AA- AD- AD- AD- DD- DD- DD-',
  rollbackVm: 'AA- AD- AD- AD- DD- DD- DD-',
  makeVmTemplate: 'AA- AD- AD- AD- DD- DD- DD-',
  cloneVm: 'AA- AD- AD- AD- DD- DD- DD-',
  listBackups: 'AA- AD- AD- AD- AD- DD- DD-',
  createBackup: 'AA- AD- AD- AD- DD- DD- DD-',
  showBackup: 'AA- AD- AD- AD- AD- DD- DD-',
  deleteBackup: 'AA- AD- AD- AD- DD- DD- DD-',
  verifyBackup: 'AA- AD- AD- AD- DD- DD- DD-',
  restoreBackup: 'AA- AD- AD- AD- DD- DD- DD-',
  restoreBackupFile: 'AA- AD- AD- AD- DD- DD- DD-',
  collectBackupStore: '--A --D --D --D --D --D --D',
  challengeBackups: 'AA- AD- AD- AD- AD- DD- DD-',
  listBackupAudits: 'AA- AD- AD- AD- AD- DD- DD-',
  searchBackups: 'AA- AD- AD- AD- AD- DD- DD-',
  listBackupSchedules: 'AA- AD- AD- AD- AD- DD- DD-',
  setBackupSchedule: 'AA- AD- AD- AD- DD- DD- DD-',
  showBackupSchedule: 'AA- AD- AD- AD- AD- DD- DD-',
  deleteBackupSchedule: 'AA- AD- AD- AD- DD- DD- DD-',
  createConsoleTicket: 'AA- AD- AD- AD- DD- AD- DD-',
  openVmConsole: 'AA- AD- AD- AD- DD- AD- DD-',
  openVmVnc: 'AA- AD- AD- AD- DD- AD- DD-',
  listNetworks: 'AAA ADA ADA ADA ADA DDA DDA',
  createNetwork: 'AA- AD- AD- AD- DD- DD- DD-',
  getNetwork: 'AA- AD- AD- AD- AD- DD- DD-',
  deleteNetwork: 'AA- AD- AD- AD- DD- DD- DD-',
  listNetworkForwards: 'AA- AD- AD- AD- AD- DD- DD-',
  createNetworkForward: 'AA- AD- AD- AD- DD- DD- DD-',
  deleteNetworkForward: 'AA- AD- AD- AD- DD- DD- DD-',
  probeNetwork: 'AA- DD- DD- DD- DD- DD- DD-',
  listSecgroups: 'AAA ADA ADA ADA ADA DDA DDA',
  createSecgroup: 'AA- AD- AD- AD- DD- DD- DD-',
  getSecgroup: 'AA- AD- AD- AD- AD- DD- DD-',
  deleteSecgroup: 'AA- AD- AD- AD- DD- DD- DD-',
  createSecgroupRule: 'AA- AD- AD- AD- DD- DD- DD-',
  deleteSecgroupRule: 'AA- AD- AD- AD- DD- DD- DD-',
  listPools: '--A --D --D --D --D --D --D',
  createPool: '--A --D --D --D --D --D --D',
  getPool: '--A --D --D --D --D --D --D',
  setPoolLabels: '--A --D --D --D --D --D --D',
  deletePool: '--A --D --D --D --D --D --D',
  scrubPool: '--A --D --D --D --D --D --D',
  replacePoolMember: '--A --D --D --D --D --D --D',
  getKeyStatus: '--A --D --D --D --D --D --D',
  rotateKeys: '--A --D --D --D --D --D --D',
  listVolumes: 'AAA ADA ADA ADA ADA DDA DDA',
  createVolume: 'AA- AD- AD- AD- DD- DD- DD-',
  getVolume: 'AA- AD- AD- AD- AD- DD- DD-',
  deleteVolume: 'AA- AD- AD- AD- DD- DD- DD-',
  snapshotVolume: 'AA- AD- AD- AD- DD- DD- DD-',
  cloneVolume: 'AA- AD- AD- AD- DD- DD- DD-',
  resizeVolume: 'AA- AD- AD- AD- DD- DD- DD-',
  listDesktopPools: 'AAA ADA ADA ADA ADA DDA DDA',
  createDesktopPool: 'AA- AD- AD- DD- DD- DD- DD-',
  getDesktopPool: 'AA- AD- AD- AD- AD- DD- DD-',
  deleteDesktopPool: 'AA- AD- AD- DD- DD- DD- DD-',
  updateDesktopPoolBase: 'AA- AD- AD- DD- DD- DD- DD-',
  grantDesktopPool: 'AA- AD- AD- DD- DD- DD- DD-',
  revokeDesktopPool: 'AA- AD- AD- DD- DD- DD- DD-',
  connectDesktop: 'AAA AAA AAA AAA AAA AAA AAA',
  leaveDesktop: 'AAA AAA AAA AAA AAA AAA AAA',
  listMyDesktops: '--A --A --A --A --A --A --A',
  listOperations: 'AAA ADA ADA ADA ADA DDA DDA',
  getOperation: 'AAA ADD ADD ADD ADD DDD DDD',
  cancelOperation: 'AAA ADD ADD ADD DDD DDD DDD',
  streamOperationEvents: 'AAA ADD ADD ADD ADD DDD DDD',
  streamEvents: '--A --A --A --A --A --A --A',
  login: '--A --A --A --A --A --A --A',
  loginOidc: '--A --A --A --A --A --A --A',
  logout: '--A --A --A --A --A --A --A',
  createWebSession: '--A --A --A --A --A --A --A',
  createWebSessionFromToken: '--A --A --A --A --A --A --A',
  whoami: '--A --A --A --A --A --A --A',
  enrollTotp: '--A --A --A --A --A --A --A',
  confirmTotp: '--A --A --A --A --A --A --A',
  listTokens: '--A --A --A --A --A --A --A',
  createToken: '--A --A --A --A --A --A --A',
  revokeToken: '--A --A --A --A --A --A --A',
  listUsers: '--A --D --D --D --D --D --D',
  createUser: '--A --D --D --D --D --D --D',
  deleteUser: '--A --D --D --D --D --D --D',
  setUserPassword: '--A --D --D --D --D --D --D',
  listRoles: '--A --A --A --A --A --A --A',
  createRole: '--A --D --D --D --D --D --D',
  deleteRole: '--A --D --D --D --D --D --D',
  listPermissions: '--A --A --A --A --A --A --A',
  listAccess: 'AAA ADA ADA ADA ADA DDA DDA',
  grantRole: 'AAA ADD DDD DDD DDD DDD DDD',
  revokeRole: 'AAA ADD DDD DDD DDD DDD DDD',
  listAudit: 'AAA ADA DDA DDA DDA DDA DDA',
  listAuditHeads: '--A --D --D --D --D --D --D',
  verifyAudit: '--A --D --D --D --D --D --D',
  getAuditInclusionProof: '--A --D --D --D --D --D --D',
  getAuditConsistencyProof: '--A --D --D --D --D --D --D',
  exportAudit: '--A --D --D --D --D --D --D',
};

type Context = 'own' | 'other' | 'platform';
const CONTEXTS: Context[] = ['own', 'other', 'platform'];

interface OpenApiOperation {
  operationId: string;
  parameters?: Array<{ name: string; in: string }>;
  requestBody?: unknown;
}

/** The path parameters of the fixtures, by name; the project-dependent ones are filled per context. */
function pathValue(name: string, context: Context, operations: Record<Context, string>): string {
  const fixed: Record<string, string> = {
    vm: 'vm1',
    network: 'net1',
    group: 'sg1',
    rule: 'rule-none',
    pool: 'pool1',
    volume: 'vol1',
    host: 'h1',
    name: 'h1',
    user: 'dummy',
    role: 'custom',
    protocol: 'tcp',
    port: '8080',
    seq: '1',
    snapshot: 'snap1',
    backup: 'bak-000000000000',
  };
  if (name === 'project') return context === 'other' ? 'beta' : 'alpha';
  if (name === 'id') return operations[context];
  if (name in fixed) return fixed[name];
  throw new Error(`No fixture for path parameter ${name}`);
}

describe('authorization matrix (every route x role x project)', () => {
  let cluster: FakeCluster;
  let app: FastifyInstance;
  const userIds = new Map<Role, string>();
  const operations = {} as Record<Context, string>;

  before(async () => {
    cluster = await fakeCluster(['h1']);
    const { services, db } = cluster;
    app = await cluster.app();
    for (const name of ['alpha', 'beta'])
      await db
        .insertInto('projects')
        .values({ id: `prj-${name}`, name, created_at: new Date().toISOString(), requirements: '{}' })
        .execute();
    for (const project of ['alpha', 'beta']) {
      await services.networks.create({ name: 'net1', subnet: '10.80.0.0/24', dhcp: false, nat: false, project });
      await services.secgroups.create({ name: 'sg1', project });
      const created = await services.vms.create({ name: 'vm1', image: 'tiny', cpus: 1, memoryMb: 128, project, waitReady: false });
      await services.operations.wait(created.id);
      operations[project === 'alpha' ? 'own' : 'other'] = created.id;
    }
    const platformOperation = await services.operations.start('matrix-platform', { type: 'image', id: 'img-x', name: 'x' }, async () => undefined);
    await services.operations.wait(platformOperation.id);
    operations.platform = platformOperation.id;
    await services.access.users.create('dummy');
    for (const role of ROLES) {
      const user = await services.access.users.create(`u-${role}`, 'matrix-password-1');
      userIds.set(role, (await services.access.users.row(user.name)).id);
      if (role === 'none') continue;
      await services.access.roles.grant({ type: 'user', id: userIds.get(role)!, name: user.name }, role, role === 'admin' ? null : 'prj-alpha');
    }
  });
  after(() => cluster.close());

  /** A fresh token of the role's user, so a route such as logout cannot spoil the next cell. */
  async function tokenOf(role: Role): Promise<string> {
    const owner: Principal = {
      userId: userIds.get(role)!,
      userName: `u-${role}`,
      tokenId: '',
      tokenName: '',
      grants: [],
      tokenProjectId: null,
      tokenRole: null,
    };
    return (await cluster.services.access.tokens.create(owner, { name: `m-${Math.random().toString(36).slice(2)}`, kind: 'session' })).secret;
  }

  /** One cell: the request of `operation` in `context`, made harmless, answered allowed or denied. */
  async function probe(method: string, path: string, operation: OpenApiOperation, context: Context, role: Role): Promise<'A' | 'D'> {
    const parameters = operation.parameters ?? [];
    const url = path.replace(/\{(\w+)\}/g, (_, name: string) => encodeURIComponent(pathValue(name, context, operations)));
    const query = new URLSearchParams();
    const takesProjectQuery = parameters.some((p) => p.in === 'query' && p.name === 'project');
    const projectName = context === 'own' ? 'alpha' : 'beta';
    if (takesProjectQuery && context !== 'platform') query.set('project', projectName);
    let body: Record<string, unknown> | undefined;
    const harmless = ![
      'getOperation',
      'streamOperationEvents',
      'cancelOperation',
      'grantRole',
      'revokeRole',
      'joinHost',
      'reportHostVms',
      'hostHeartbeat',
      'reportHostUsage',
      'setUserPassword',
    ].includes(operation.operationId);
    if (operation.operationId === 'grantRole') body = { user: 'dummy', role: 'reader', ...(context === 'platform' ? {} : { project: projectName }) };
    else if (operation.operationId === 'revokeRole') {
      query.set('user', 'dummy');
      query.set('role', 'reader');
      if (context !== 'platform') query.set('project', projectName);
    } else if (operation.operationId === 'joinHost')
      body = {
        name: 'h9',
        joinToken: 'wrong',
        endpoint: 'unix:/x',
        agentToken: 'x'.repeat(32),
        accelerator: 'tcg',
        acceleratorReason: 'x',
        cpus: 1,
        memoryMb: 64,
      };
    else if (operation.operationId === 'reportHostVms') body = { vms: [], full: false };
    else if (operation.operationId === 'hostHeartbeat') body = { vms: [] };
    else if (operation.operationId === 'reportHostUsage')
      body = {
        at: new Date().toISOString(),
        host: { cpuTotalSeconds: 1, cpuIdleSeconds: 0, cpus: 1, memoryUsedBytes: 0, memoryTotalBytes: 1 },
        vms: [],
      };
    else if (operation.operationId === 'setUserPassword') body = { password: 'another-password-1' };
    else if (parameters.some((p) => p.in === 'query') && harmless) query.set('matrixProbe', '1');
    else if (operation.requestBody && harmless) body = { matrixProbe: 1 };
    if (operation.requestBody && body && !takesProjectQuery && context !== 'platform' && !('project' in body) && harmless) body.project = projectName;
    const secret = await tokenOf(role);
    // The screen opens only with a console ticket: the role asks for one first, as a page does.
    if (parameters.some((p) => p.in === 'query' && p.name === 'ticket' && (p as { required?: boolean }).required)) {
      const issued = await app.inject({
        method: 'POST',
        url: `${url.replace(/\/vnc$/, '/console-ticket')}?project=${projectName}`,
        headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
        payload: '{"kind":"vnc"}',
      });
      if (issued.statusCode === 401 || issued.statusCode === 403) return 'D';
      query.set('ticket', (issued.json() as { ticket: string }).ticket);
    }
    const response = await app.inject({
      method: method.toUpperCase() as 'GET',
      url: `${url}${query.size > 0 ? `?${query}` : ''}`,
      headers: { authorization: `Bearer ${secret}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      ...(body ? { payload: JSON.stringify(body) } : {}),
    });
    return response.statusCode === 401 || response.statusCode === 403 ? 'D' : 'A';
  }

  it('allows and denies exactly as the table says, for every route of the OpenAPI document', async () => {
    const document = (await app.inject({ method: 'GET', url: '/v1/openapi.json' })).json() as { paths: Record<string, Record<string, OpenApiOperation>> };
    const routes = Object.entries(document.paths).flatMap(([path, methods]) =>
      Object.entries(methods).map(([method, operation]) => ({ path, method, operation })),
    );
    const missing = routes.map((r) => r.operation.operationId).filter((id) => !(id in EXPECTED));
    assert.deepEqual(missing, [], 'routes missing from the table: add a line for each (a new route cannot ship unchecked)');
    const unexpected: string[] = [];
    const observed: string[] = [];
    const counts = { allowed: 0, denied: 0 };
    for (const { path, method, operation } of routes) {
      const triplets = EXPECTED[operation.operationId].split(' ');
      const row: string[] = [];
      for (const [index, role] of ROLES.entries()) {
        let triplet = '';
        for (const [c, context] of CONTEXTS.entries()) {
          const want = triplets[index][c];
          if (want === '-') {
            triplet += '-';
            continue;
          }
          const got = await probe(method, path, operation, context, role);
          triplet += got;
          counts[got === 'A' ? 'allowed' : 'denied'] += 1;
          if (got !== want)
            unexpected.push(
              `${operation.operationId} as ${role} in ${context}: expected ${want === 'A' ? 'allow' : 'deny'}, got ${got === 'A' ? 'allow' : 'deny'}`,
            );
        }
        row.push(triplet);
      }
      observed.push(`  ${`${operation.operationId}:`.padEnd(26)}'${row.join(' ')}',`);
    }
    if (process.env.MATRIX_PRINT) console.log(observed.join('\n'));
    console.log(
      `# authorization matrix: ${routes.length} routes x ${ROLES.length} roles, ${counts.allowed + counts.denied} requests: ${counts.allowed} allowed, ${counts.denied} denied, ${unexpected.length} unexpected`,
    );
    assert.deepEqual(unexpected, []);
  });
});
