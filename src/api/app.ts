/**
 * The control plane's REST API. `buildApp()` wires routes to services without listening, so route
 * tests use `inject()`; the same TypeBox schemas validate requests and produce /v1/openapi.json.
 * What every route shares is here (validation options, hooks, error handling, the document);
 * the routes themselves are one Fastify plugin per resource in routes/.
 */
import cookie from '@fastify/cookie';
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from '../core/logger.ts';
import type { HostRegistry } from '../control/hosts.ts';
import type { ImageCatalogue } from '../control/images.ts';
import type { NetworkService } from '../control/networks.ts';
import type { OperationManager } from '../control/operations.ts';
import type { SecurityGroupService } from '../control/security-groups.ts';
import type { StorageCatalogue } from '../control/storage.ts';
import type { HostMaintenance } from '../migration/host-maintenance.ts';
import type { ClusterBalancer } from '../migration/cluster-balancer.ts';
import type { MigrationService } from '../migration/migration-service.ts';
import type { VmService } from '../control/vms.ts';
import type { VmOwner } from '../control/vm-owner.ts';
import type { PlacementService } from '../control/placement.ts';
import type { HaManager } from '../ha/ha-manager.ts';
import type { Autostart } from '../control/autostart.ts';
import type { ControlPlaneMetrics } from '../metrics/control-plane-metrics.ts';
import type { DesktopBroker } from '../desktop/desktop-broker.ts';
import type { DesktopPools } from '../desktop/desktop-pools.ts';
import type { Db } from '../state/database.ts';
import type { ChangeFeed } from '../events/change-feed.ts';
import type { UsageStore } from '../metrics/usage-store.ts';
import { ErrorBody } from '../wire/schemas.ts';
import type { AccessControl } from '../access/access-control.ts';
import type { AuditLog } from '../audit/audit-log.ts';
import { installAccessHooks, installTokenOnlyHook } from './access-hook.ts';
import { toApiError } from './errors.ts';
import { openApiOptions } from './openapi.ts';
import { coerceTextValues } from './query-coercion.ts';
import { auditRoutes } from './routes/audit.ts';
import { authRoutes } from './routes/auth.ts';
import { userRoutes } from './routes/users.ts';
import { consoleRoutes } from './routes/console.ts';
import { hostRoutes } from './routes/hosts.ts';
import { imageRoutes } from './routes/images.ts';
import { installRequestMetrics, metricsRoutes } from './routes/metrics.ts';
import { networkRoutes } from './routes/networks.ts';
import { operationRoutes } from './routes/operations.ts';
import { poolRoutes } from './routes/pools.ts';
import { keyRoutes } from './routes/keys.ts';
import { projectRoutes } from './routes/projects.ts';
import { secgroupRoutes } from './routes/secgroups.ts';
import { statusRoutes } from './routes/status.ts';
import { vmRoutes } from './routes/vms.ts';
import { vmSnapshotRoutes } from './routes/vm-snapshots.ts';
import type { VmSnapshots } from '../control/vm-snapshots.ts';
import { backupRoutes } from './routes/backups.ts';
import type { BackupService } from '../control/backups.ts';
import { backupScheduleRoutes } from './routes/backup-schedules.ts';
import type { BackupSchedules } from '../control/backup-schedules.ts';
import type { BackupScheduler } from '../control/backup-scheduler.ts';
import { trustedLaunchRoutes } from './routes/trusted-launch.ts';
import { placementRoutes } from './routes/placement.ts';
import { haRoutes } from './routes/ha.ts';
import { clusterRoutes } from './routes/cluster.ts';
import { desktopRoutes } from './routes/desktops.ts';
import { webSessionRoutes } from './routes/web-session.ts';
import { installSecurityHeaders, webConsoleRoutes } from './web-console.ts';
import { eventRoutes } from './routes/events.ts';
import { usageRoutes } from './routes/usage.ts';

export { API_VERSION } from './version.ts';

export interface AppServices {
  db: Db;
  hosts: HostRegistry;
  images: ImageCatalogue;
  vms: VmService;
  /** VM snapshots, rollback, templates and clones. */
  snapshots: VmSnapshots;
  /** Backups into the backup store, and their restore. */
  backups: BackupService;
  /** Backup schedules with retention, and the scheduler that runs them. */
  backupSchedules: BackupSchedules;
  backupScheduler: BackupScheduler;
  placement: PlacementService;
  ha: HaManager;
  autostart: Autostart;
  networks: NetworkService;
  secgroups: SecurityGroupService;
  storage: StorageCatalogue;
  migrations: MigrationService;
  maintenance: HostMaintenance;
  /** Balancing the cluster: settings, runs and the background balancer. */
  balancer: ClusterBalancer;
  operations: OperationManager;
  access: AccessControl;
  audit: AuditLog;
  /** The one owner every action on a VM claims it from. */
  owner: VmOwner;
  /** Desktop pools (VDI): their management, and the broker that hands desktops out. */
  desktopPools: DesktopPools;
  desktopBroker: DesktopBroker;
  /** What GET /metrics serves. */
  metrics: ControlPlaneMetrics;
  /** The cluster-wide change feed that GET /v1/events streams. */
  changes: ChangeFeed;
  /** The usage graphs of VMs and hosts, fed by the agents. */
  usage: UsageStore;
  /** Where the audit log publishes its heads, read back by verify when no head is given. */
  auditPublishFile?: string;
  dataDir: string;
  logger?: Logger;
}

/** Builds the API app; the caller listens. With `options.https` it serves HTTPS with that certificate and key. */
export async function buildApp(
  services: AppServices,
  options: {
    https?: { cert: Buffer; key: Buffer };
    /**
     * `tokenOnly` checks that a bearer token is valid and nothing more: no authorization, no
     * audit. It exists for bench/access, which measures what access control costs against the
     * same build without it; nothing that serves users passes it.
     */
    accessControl?: 'enforce' | 'tokenOnly';
    /** The built web console to serve at `/` (default web/dist, see web-console.ts). */
    webConsoleRoot?: string;
  } = {},
): Promise<FastifyInstance> {
  // No coercion by the validator: bodies are checked as sent, and query strings and path
  // parameters are turned into numbers and booleans strictly, before validation (query-coercion.ts).
  const app = Fastify({
    ...(options.https ? { https: options.https } : {}),
    logger: false,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true, verbose: true } },
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.addHook('preValidation', async (request) => {
    const schema = request.routeOptions.schema as
      | { querystring?: Parameters<typeof coerceTextValues>[1]; params?: Parameters<typeof coerceTextValues>[1] }
      | undefined;
    coerceTextValues(request.query, schema?.querystring);
    coerceTextValues(request.params, schema?.params);
  });
  await app.register(swagger, openApiOptions);
  await app.register(websocket);
  // Parses the web console's session cookie (access-hook.ts reads it when there is no bearer token).
  await app.register(cookie);
  installSecurityHeaders(app);
  app.addSchema(ErrorBody);

  if (options.accessControl === 'tokenOnly') installTokenOnlyHook(app, services);
  else installAccessHooks(app, services);
  installRequestMetrics(app, services.metrics);
  app.setErrorHandler((error, request, reply) => {
    const { status, body } = toApiError(error as Error);
    // The audit entry of a failed request names its code (access-hook.ts reads it when the request ends).
    (reply as typeof reply & { nubisError?: { code: string; message: string } }).nubisError = body;
    // Without the query: it may hold a console ticket.
    if (status >= 500) services.logger?.error({ err: error, url: request.url.split('?')[0] }, 'request failed');
    void reply.status(status).send(body);
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.status(404).send({ code: 'ROUTE_NOT_FOUND', message: `No route ${request.method} ${request.url}; see /v1/openapi.json` });
  });

  // The hooks and handlers above reach every plugin below, which registers in its own context.
  // The order of registration is the order of `paths` in the OpenAPI document.
  const { db, hosts, images, vms, placement, ha, autostart, networks, secgroups, storage, migrations, maintenance, operations, access, audit, dataDir } =
    services;
  await app.register(statusRoutes, { hosts, vms, dataDir });
  await app.register(metricsRoutes, { metrics: services.metrics });
  await app.register(projectRoutes, { db });
  await app.register(hostRoutes, { hosts, vms, maintenance, ha, autostart });
  await app.register(clusterRoutes, { balancer: services.balancer });
  await app.register(imageRoutes, { images, operations });
  await app.register(vmRoutes, { vms, migrations, usage: services.usage });
  await app.register(vmSnapshotRoutes, { snapshots: services.snapshots });
  await app.register(backupRoutes, { backups: services.backups });
  await app.register(backupScheduleRoutes, { schedules: services.backupSchedules, access });
  await app.register(trustedLaunchRoutes, { db, vms });
  await app.register(usageRoutes, { db, vms, hosts, usage: services.usage });
  await app.register(consoleRoutes, { db, vms, hosts, access, desktops: services.desktopBroker });
  await app.register(networkRoutes, { networks, vms });
  await app.register(secgroupRoutes, { secgroups });
  await app.register(placementRoutes, { placement, vms });
  await app.register(haRoutes, { db, hosts, groups: placement.haGroups });
  await app.register(poolRoutes, { db, storage, operations, residency: placement.residency, changes: services.changes, owner: services.owner });
  await app.register(keyRoutes, { storage, operations });
  await app.register(desktopRoutes, { pools: services.desktopPools, broker: services.desktopBroker });
  await app.register(operationRoutes, { operations, access });
  await app.register(eventRoutes, { changes: services.changes, access });
  await app.register(authRoutes, { db, access });
  await app.register(webSessionRoutes, { access });
  await app.register(userRoutes, { db, access, desktops: services.desktopPools });
  await app.register(auditRoutes, { db, audit, publishFile: services.auditPublishFile });
  await app.register(webConsoleRoutes, { root: options.webConsoleRoot });
  return app;
}
