/**
 * The control plane process: opens the state database, makes sure the first-start secrets and
 * the `default` project exist, registers the built-in image, and serves the API.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { closeDataFolder } from '../core/data-folder.ts';
import { createServer } from 'node:http';
import type { FastifyInstance } from 'fastify';
import { buildApp, type AppServices } from '../api/app.ts';
import { newId, newSecret } from '../core/ids.ts';
import type { Logger } from '../core/logger.ts';
import { dataPaths } from '../core/paths.ts';
import { readTinyImage } from '../images/build-tiny.ts';
import { openDatabase, type Db } from '../state/database.ts';
import { type AgentFactory, HostRegistry } from '../control/hosts.ts';
import { ImageCatalogue } from '../control/images.ts';
import { OperationManager } from '../control/operations.ts';
import { NetworkService } from '../control/networks.ts';
import { SecurityGroupService } from '../control/security-groups.ts';
import { HostMaintenance } from '../migration/host-maintenance.ts';
import { ClusterBalancer } from '../migration/cluster-balancer.ts';
import { MigrationService } from '../migration/migration-service.ts';
import { StorageCatalogue, storageEndpointsOf } from '../control/storage.ts';
import { DirPoolCatalogue } from '../control/dir-pools.ts';
import { PlacementService } from '../control/placement.ts';
import { HaManager } from '../ha/ha-manager.ts';
import { Autostart } from '../control/autostart.ts';
import { VmService } from '../control/vms.ts';
import { VmSnapshots } from '../control/vm-snapshots.ts';
import { BackupService } from '../control/backups.ts';
import { BackupSchedules } from '../control/backup-schedules.ts';
import { BackupScheduler } from '../control/backup-scheduler.ts';
import { BackupStoreClient } from '../backup/store-client.ts';
import { FileKeyProvider } from '../storage/keys/file-key-provider.ts';
import { VmOwner } from '../control/vm-owner.ts';
import { AccessControl } from '../access/access-control.ts';
import { bootstrapAccess } from '../access/bootstrap.ts';
import { OidcVerifier, type OidcConfig } from '../access/oidc.ts';
import { AuditLog } from '../audit/audit-log.ts';
import { ControlPlaneMetrics } from '../metrics/control-plane-metrics.ts';
import { DesktopBroker } from '../desktop/desktop-broker.ts';
import { DesktopMachines } from '../desktop/desktop-machines.ts';
import { DesktopPools } from '../desktop/desktop-pools.ts';
import { changeFeedOf } from '../events/change-feed.ts';
import { UsageStore } from '../metrics/usage-store.ts';
import { describeResources } from './change-views.ts';
import { type ApiTlsOptions, issueNubisCertificate, prepareApiTls } from './tls.ts';

export interface ControlPlaneOptions {
  dataDir: string;
  cacheDir: string;
  /** Address to listen on. Default 127.0.0.1. */
  host?: string;
  port: number;
  /** Also serve host agents on this TCP address (the underlay), besides the unix socket. */
  agentListen?: { host: string; port: number };
  logger: Logger;
  oidc?: OidcConfig;
  /** A file outside the data folder that each signed audit head is written to. */
  auditPublishFile?: string;
  /** A command each signed audit head is piped to (as JSON on stdin). */
  auditPublishCommand?: string;
  /** Serve HTTPS: with the user's certificate, or one from the Nubis CA in `<data>/tls` (app/tls.ts). Default: HTTP. */
  tls?: ApiTlsOptions;
}

export interface RunningControlPlane {
  url: string;
  app: FastifyInstance;
  db: Db;
  operations: OperationManager;
  stop(): Promise<void>;
}

/** Reads a secret file, or creates it (mode 0600) with a new secret; `onCreate` sees a new one. */
async function secretFile(path: string, prefix: string, onCreate?: (secret: string) => Promise<void>): Promise<string> {
  if (existsSync(path)) return (await readFile(path, 'utf8')).trim();
  const secret = newSecret(prefix);
  await onCreate?.(secret);
  await writeFile(path, `${secret}\n`, { mode: 0o600 });
  return secret;
}

/** What the control plane's services are made with. */
export interface ServiceOptions {
  db: Db;
  dataDir: string;
  joinToken: string;
  controlKey?: string;
  /** How agents are reached: over HTTP unless a unit test passes fake agents. */
  agentFactory?: AgentFactory;
  logger?: Logger;
  /** OpenID Connect sign-in, when configured. */
  oidc?: OidcConfig;
  /** Where audit tree heads are published (outside the data folder). */
  auditPublishFile?: string;
  auditPublishCommand?: string;
  /** The desktop broker's clock (tests of the grace time pass their own). */
  desktopClock?: () => number;
  /** How long a console ticket lives (at most and by default 30 s; tests shorten it). */
  consoleTicketTtlMs?: number;
}

/** The control plane's services over an open database: what `buildApp` serves. */
export function createServices(options: ServiceOptions): AppServices {
  const { db } = options;
  const access = new AccessControl(db, {
    oidc: options.oidc ? new OidcVerifier(options.oidc) : undefined,
    consoleTicketTtlMs: options.consoleTicketTtlMs,
  });
  const audit = new AuditLog(db, {
    keyPath: dataPaths(options.dataDir).auditKey,
    publishFile: options.auditPublishFile,
    publishCommand: options.auditPublishCommand,
    logger: options.logger,
  });
  const operations = new OperationManager(db);
  // Without a key file (unit tests), a key of this process: agents joined to it join again later.
  const hosts = new HostRegistry(db, { joinToken: options.joinToken, controlKey: options.controlKey ?? newSecret('nubis_ctlkey') }, options.agentFactory);
  const images = new ImageCatalogue(db, { imagesDir: dataPaths(options.dataDir).images, importDir: dataPaths(options.dataDir).imports });
  const networks = new NetworkService({ db, hosts });
  const secgroups = new SecurityGroupService({ db, hosts });
  const paths = dataPaths(options.dataDir);
  const storage = new StorageCatalogue(db, storageEndpointsOf(paths), new DirPoolCatalogue(db, hosts));
  // The one owner of every VM: user actions and migrations claim VMs from the same table.
  const owner = new VmOwner();
  const placement = new PlacementService({ db, hosts });
  const vms = new VmService({ db, hosts, images, operations, networks, secgroups, storage, owner, placement });
  const snapshots = new VmSnapshots({ db, hosts, owner, operations, vms, storage });
  const backups = new BackupService({
    ...{ db, hosts, owner, operations, vms, storage },
    store: new BackupStoreClient(paths.backupStoreSocket),
    keys: new FileKeyProvider(paths.backupKeys),
  });
  const backupSchedules = new BackupSchedules({ db, vms });
  const backupScheduler = new BackupScheduler({ db, backups, operations }, { logger: options.logger });
  const migrations = new MigrationService({
    ...{ db, hosts, networks, secgroups, operations, dirPools: storage.dirPools, owner, vms, placement, storage },
    // Migrations over TLS get certificates of the Nubis CA in the data folder (app/tls.ts).
    issueCertificate: (request) => issueNubisCertificate(options.dataDir, request),
  });
  const maintenance = new HostMaintenance({ db, hosts, operations, migrations });
  const balancer = new ClusterBalancer({ db, placement, owner, dirPools: storage.dirPools, operations, migrations, logger: options.logger });
  const metrics = new ControlPlaneMetrics({ db, hosts, storage }, { logger: options.logger });
  const ha = new HaManager({ db, hosts, placement, owner, vms, networks, storage, migrations, operations, logger: options.logger });
  const autostart = new Autostart({ db, vms, operations, logger: options.logger });
  const desktopMachines = new DesktopMachines({ db, hosts, images, vms, storage, operations, owner });
  const desktopBroker = new DesktopBroker(
    { db, machines: desktopMachines, operations },
    { logger: options.logger, ...(options.desktopClock ? { now: options.desktopClock } : {}) },
  );
  const desktopPools = new DesktopPools({ db, storage, images, networks, operations, users: access.users, machines: desktopMachines, broker: desktopBroker });
  const services: AppServices = {
    owner,
    desktopBroker,
    desktopPools,
    ha,
    autostart,
    db,
    hosts,
    images,
    vms,
    snapshots,
    backups,
    backupSchedules,
    backupScheduler,
    placement,
    networks,
    secgroups,
    storage,
    migrations,
    maintenance,
    balancer,
    operations,
    access,
    audit,
    metrics,
    changes: changeFeedOf(db),
    usage: new UsageStore({ file: dataPaths(options.dataDir).usage, logger: options.logger }),
    auditPublishFile: options.auditPublishFile,
    dataDir: options.dataDir,
    logger: options.logger,
  };
  describeResources(services.changes, services);
  // A deleted VM's graphs go with it.
  services.changes.subscribe(({ event }) => event.type === 'vm' && event.action === 'deleted' && services.usage.dropVm(event.id));
  return services;
}

/**
 * Starts the control plane's background loops, once it listens and operations a stop cut off are
 * failed; returns what stops them.
 */
async function startLoops(services: AppServices): Promise<() => Promise<void>> {
  const { ha, balancer, desktopBroker, backups, backupScheduler } = services;
  ha.start();
  // The background balancer's rounds (they move VMs only with `nubis cluster set --balance auto`).
  await balancer.start();
  // Resets after the grace time and spare desktops kept booted.
  await desktopBroker.start();
  backups.auditor.start(); // proofs of retrievability of every backup, again when its last one is a day old
  // Scheduled backups and their retention: the runs a stop cut off are taken up from their (failed) operations.
  await backupScheduler.start();
  return async () => {
    await ha.stop();
    balancer.stop();
    await desktopBroker.stop();
    await backups.auditor.stop();
    await backupScheduler.stop();
  };
}

/** Starts the control plane and resolves once it listens. */
export async function startControlPlane(options: ControlPlaneOptions): Promise<RunningControlPlane> {
  const paths = dataPaths(options.dataDir);
  await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
  const db = await openDatabase(paths.database);
  // mkdir's mode does nothing for a folder that exists: the data folder holds the database and
  // the secrets, so it is closed to others whoever made it, but for the ways VMs' users need.
  await closeDataFolder(options.dataDir);
  const now = new Date().toISOString();
  const joinToken = await secretFile(paths.joinToken, 'nubis_join');
  const controlKey = await secretFile(paths.controlKey, 'nubis_ctlkey');
  if (!(await db.selectFrom('projects').select('id').where('name', '=', 'default').executeTakeFirst())) {
    await db
      .insertInto('projects')
      .values({ id: newId('prj'), name: 'default', created_at: now, requirements: '{}' })
      .execute();
  }
  await bootstrapAccess(db, paths.adminToken);
  const services = createServices({
    db,
    dataDir: options.dataDir,
    joinToken,
    controlKey,
    logger: options.logger,
    oidc: options.oidc,
    auditPublishFile: options.auditPublishFile,
    auditPublishCommand: options.auditPublishCommand,
  });
  const { operations, images, audit, usage } = services;
  await audit.start();
  await usage.load();
  // Graphs of VMs and hosts deleted while the control plane was down go now.
  usage.keepOnly(
    new Set((await db.selectFrom('vms').select('id').execute()).map((row) => row.id)),
    new Set((await db.selectFrom('hosts').select('id').execute()).map((row) => row.id)),
  );
  usage.start();
  await operations.failInterrupted();
  await images.prepareFolders();
  const tiny = readTinyImage(options.cacheDir);
  if (tiny) await images.registerBuiltin('tiny', { kernelPath: tiny.kernelPath, initrdPath: tiny.initrdPath });
  else options.logger.warn('The tiny image is not built; run nubis image build tiny');
  // Before buildApp: a bad certificate or name stops the start here, with nothing listening yet.
  const tls = options.tls ? await prepareApiTls(options.dataDir, options.tls, options.host) : undefined;
  const app = await buildApp(services, tls ? { https: tls.https } : {});
  const address = await app.listen({ host: options.host ?? '127.0.0.1', port: options.port });
  const url = address.replace('[::1]', '127.0.0.1');
  // Agents in host namespaces cannot reach the root namespace's loopback; a unix socket in the
  // data folder reaches every namespace of this machine without an address in the root one.
  // It stays plain HTTP also when the API is HTTPS: it is a local socket in a 0700 folder.
  const agentSocket = dataPaths(options.dataDir).agentApiSocket;
  await rm(agentSocket, { force: true });
  const agentServer = createServer((request, response) => app.routing(request, response));
  await new Promise<void>((resolve, reject) => agentServer.listen(agentSocket, resolve).once('error', reject));
  // Agents on other machines (or host namespaces on the test bed's underlay) over TCP: cutting a
  // host's link then cuts it off the control plane, as it would between separate servers.
  const agentTcp = options.agentListen ? createServer((request, response) => app.routing(request, response)) : undefined;
  if (agentTcp && options.agentListen)
    await new Promise<void>((resolve, reject) => agentTcp.listen(options.agentListen!.port, options.agentListen!.host, resolve).once('error', reject));
  const caPath = tls?.caPath ? { caPath: tls.caPath } : {};
  await writeFile(paths.apiInfo, `${JSON.stringify({ url, agentUrl: `unix:${agentSocket}`, pid: process.pid, ...caPath }, null, 2)}\n`);
  const stopLoops = await startLoops(services);
  options.logger.info({ url }, 'control plane listening');
  return {
    url,
    app,
    db,
    operations,
    async stop() {
      await stopLoops();
      await new Promise((resolve) => agentServer.close(resolve));
      if (agentTcp) await new Promise((resolve) => agentTcp.close(resolve));
      await app.close();
      await usage.stop();
      await audit.stop();
      await db.destroy();
    },
  };
}
