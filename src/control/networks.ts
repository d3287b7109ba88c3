/**
 * Virtual networks in the control plane: their records, IPAM (every NIC gets a MAC and an IP
 * that stay with it for its life), and keeping each host's plumbing in step: the hosts that carry
 * a network (network-carriers.ts decides which), their VXLAN peers, the network's DHCP server
 * with its fixed leases and its NAT gateway, and clearing hosts that no longer need it.
 */
import { sql, type Transaction } from 'kysely';
import { NubisError, messageOf } from '../core/errors.ts';
import { projectIdByName, type VisibleProjects } from './projects.ts';
import { enforceQuota } from '../access/quotas.ts';
import { auditedTransaction } from '../audit/audit-context.ts';
import { newId, newMac } from '../core/ids.ts';
import { Revert } from '../core/revert.ts';
import type { Db } from '../state/database.ts';
import type { Database, HostsTable, NetworksTable, NicsTable } from '../state/schema.ts';
import { KeyedSerialQueue } from '../core/serial-queue.ts';
import { HOST_OFFLINE_AFTER_MS, type HostRegistry } from './hosts.ts';
import { NetworkCarriers, type NetworkPlacement } from './network-carriers.ts';
import { checkAddress, firstFreeAddress, formatIpv4, parseIpv4, parseSubnet, subnetsOverlap } from './ipam.ts';
import { publishChange } from '../events/change-feed.ts';
import { writeTransaction } from '../state/write-queue.ts';

/** VNIs Nubis hands out start here; lower ones are left for explicit choice. */
const FIRST_AUTO_VNI = 1000;
const MAX_VNI = 16_777_215;
/** Conntrack zones networks get (zone 0 is the hosts' default); see network/conntrack-zones.ts. */
const MAX_CT_ZONE = 65_535;
/** Underlay MTU 1500 minus the VXLAN, UDP, IP and inner Ethernet headers (50 bytes). */
export const OVERLAY_MTU = 1450;

export interface NetworkView {
  id: string;
  name: string;
  project: string;
  subnet: string;
  gateway?: string;
  dhcp: boolean;
  nat: boolean;
  dhcpAddress?: string;
  vni: number;
  /** The network's conntrack zone on every host that carries it. */
  conntrackZone: number;
  mtu: number;
  nicCount: number;
  hosts: string[];
  createdAt: string;
}

export interface PortForwardView {
  id: string;
  protocol: 'tcp' | 'udp';
  hostPort: number;
  vm: string;
  vmPort: number;
  /** Where clients connect: the underlay address of the host running the network's gateway. */
  listenAddress?: string;
  host?: string;
}

export interface NetworkCreateRequest {
  name: string;
  subnet: string;
  gateway?: string;
  dhcp?: boolean;
  /** A NAT gateway at `gateway`: VMs reach the hosts' outside network, port forwards reach VMs. */
  nat?: boolean;
  vni?: number;
  project?: string;
}

export class NetworkService {
  readonly #db: Db;
  readonly #hosts: HostRegistry;
  /** One change of a network's placement at a time: syncs, unplugs, probe holds, delete. */
  readonly #syncQueue = new KeyedSerialQueue();
  readonly #carriers: NetworkCarriers;

  constructor(deps: { db: Db; hosts: HostRegistry }) {
    this.#db = deps.db;
    this.#hosts = deps.hosts;
    this.#carriers = new NetworkCarriers(deps.db);
  }

  async #projectId(name = 'default'): Promise<string> {
    return projectIdByName(this.#db, name);
  }

  async row(ref: string, project?: string): Promise<NetworksTable> {
    const projectId = await this.#projectId(project);
    const row = await this.#db
      .selectFrom('networks')
      .selectAll()
      // By name or id, but only within the project: a reference never reaches another project's resource.
      .where('project_id', '=', projectId)
      .where((eb) => eb.or([eb('name', '=', ref), eb('id', '=', ref)]))
      .executeTakeFirst();
    if (!row) throw new NubisError('NET_NOT_FOUND', `No network ${ref} in project ${project ?? 'default'}; see nubis network list`);
    return row;
  }

  /** Validates and records a network. Nothing is plumbed until a VM uses it. */
  async create(request: NetworkCreateRequest): Promise<NetworkView> {
    const projectId = await this.#projectId(request.project);
    const subnet = parseSubnet(request.subnet);
    const taken = new Set<number>();
    const gateway = request.gateway === undefined ? undefined : checkAddress(subnet, request.gateway);
    if (request.nat && gateway === undefined)
      throw new NubisError('NET_NAT_NEEDS_GATEWAY', 'A NAT gateway needs the gateway address: add --gateway, e.g. the first address of the subnet');
    if (gateway !== undefined) taken.add(gateway);
    const dhcpAddress = request.dhcp ? firstFreeAddress(subnet, taken) : undefined;
    if (request.vni !== undefined && (!Number.isInteger(request.vni) || request.vni < 1 || request.vni > MAX_VNI))
      throw new NubisError('NET_INVALID_VNI', `VNI ${request.vni} is outside 1-${MAX_VNI}`);
    const row: NetworksTable = {
      id: newId('net'),
      project_id: projectId,
      name: request.name,
      subnet: subnet.cidr,
      gateway: gateway === undefined ? null : formatIpv4(gateway),
      dhcp: request.dhcp ? 1 : 0,
      dhcp_address: dhcpAddress === undefined ? null : formatIpv4(dhcpAddress),
      vni: 0,
      mtu: OVERLAY_MTU,
      nat: request.nat ? 1 : 0,
      ct_zone: 0,
      service_host_id: null,
      created_at: new Date().toISOString(),
    };
    // Name, subnet, VNI, zone and quota are checked in the transaction that records the network:
    // two creates at once cannot both take the same name, VNI or zone.
    await auditedTransaction(this.#db, async (trx) => {
      await this.#refuseClashes(trx, projectId, request, subnet);
      row.vni = await this.#vniFor(trx, request.vni);
      row.ct_zone = await this.#ctZoneFor(trx);
      await enforceQuota(trx, projectId, request.project ?? 'default', { networks: 1 });
      await trx.insertInto('networks').values(row).execute();
    });
    publishChange(this.#db, 'network', 'created', row.id);
    return this.#view(row);
  }

  /** A name taken in the project, or a subnet that overlaps one of the project's. */
  async #refuseClashes(trx: Transaction<Database>, projectId: string, request: NetworkCreateRequest, subnet: ReturnType<typeof parseSubnet>): Promise<void> {
    if (await trx.selectFrom('networks').select('id').where('project_id', '=', projectId).where('name', '=', request.name).executeTakeFirst()) {
      throw new NubisError('NET_NAME_TAKEN', `A network named ${request.name} exists in project ${request.project ?? 'default'}; choose another name`);
    }
    // Within a project subnets must not overlap (its VMs could not tell them apart once routed);
    // across projects they may: tenant networks are isolated from each other.
    for (const other of await trx.selectFrom('networks').select(['name', 'subnet']).where('project_id', '=', projectId).execute()) {
      if (subnetsOverlap(subnet, parseSubnet(other.subnet))) {
        throw new NubisError(
          'NET_SUBNET_OVERLAP',
          `Subnet ${subnet.cidr} overlaps ${other.subnet} of network ${other.name} in this project; choose a subnet that does not`,
        );
      }
    }
  }

  /** The VNI asked for if no network has it, else the next free one from FIRST_AUTO_VNI. */
  async #vniFor(trx: Transaction<Database>, asked: number | undefined): Promise<number> {
    if (asked !== undefined) {
      const clash = await trx.selectFrom('networks').select('name').where('vni', '=', asked).executeTakeFirst();
      if (clash) throw new NubisError('NET_VNI_TAKEN', `VNI ${asked} is used by network ${clash.name}; choose another or leave it out`);
      return asked;
    }
    const highest = await trx
      .selectFrom('networks')
      .select((eb) => eb.fn.max('vni').as('vni'))
      .executeTakeFirst();
    return Math.max(FIRST_AUTO_VNI, Number(highest?.vni ?? 0) + 1);
  }

  /** The lowest conntrack zone no network has (zones of deleted networks are used again). */
  async #ctZoneFor(trx: Transaction<Database>): Promise<number> {
    const used = await trx.selectFrom('networks').select('ct_zone').orderBy('ct_zone').execute();
    let zone = 1;
    for (const row of used) if (row.ct_zone === zone) zone++;
    if (zone > MAX_CT_ZONE)
      throw new NubisError('NET_CT_ZONES_EXHAUSTED', `Every conntrack zone (1-${MAX_CT_ZONE}) belongs to a network; delete networks no longer used`);
    return zone;
  }

  async #view(row: NetworksTable): Promise<NetworkView> {
    const [project, nicCount, hosts] = await Promise.all([
      this.#db.selectFrom('projects').select('name').where('id', '=', row.project_id).executeTakeFirst(),
      this.#db
        .selectFrom('nics')
        .select((eb) => eb.fn.countAll<number>().as('count'))
        .where('network_id', '=', row.id)
        .executeTakeFirst(),
      this.hostsOf(row.id),
    ]);
    return {
      id: row.id,
      name: row.name,
      project: project?.name ?? row.project_id,
      subnet: row.subnet,
      ...(row.gateway ? { gateway: row.gateway } : {}),
      dhcp: row.dhcp === 1,
      nat: row.nat === 1,
      ...(row.dhcp_address ? { dhcpAddress: row.dhcp_address } : {}),
      vni: row.vni,
      conntrackZone: row.ct_zone,
      mtu: row.mtu,
      nicCount: Number(nicCount?.count ?? 0),
      hosts: hosts.map((host) => host.name),
      createdAt: row.created_at,
    };
  }

  /** The networks of `project`, or (without one) of the projects in `visible`. */
  async list(project?: string, visible: VisibleProjects = 'all'): Promise<NetworkView[]> {
    let query = this.#db.selectFrom('networks').selectAll().orderBy('name');
    if (project) query = query.where('project_id', '=', await this.#projectId(project));
    else if (visible !== 'all') query = visible.length > 0 ? query.where('project_id', 'in', visible) : query.where(sql<boolean>`0`);
    return Promise.all((await query.execute()).map((row) => this.#view(row)));
  }

  async get(ref: string, project?: string): Promise<NetworkView> {
    return this.#view(await this.row(ref, project));
  }

  /**
   * Deletes a network no NIC uses, and first removes its plumbing (a DHCP server and gateway stay
   * on their host until then) from every host it was plumbed on. A host that is up but cannot
   * remove it fails the delete, which can be tried again; one that is down keeps what it has.
   */
  async delete(ref: string, project?: string): Promise<void> {
    const row = await this.row(ref, project);
    await this.#syncQueue.run(row.id, async () => {
      const users = await this.#db
        .selectFrom('nics')
        .innerJoin('vms', 'vms.id', 'nics.vm_id')
        .select('vms.name')
        .where('nics.network_id', '=', row.id)
        .execute();
      if (users.length > 0) {
        throw new NubisError('NET_IN_USE', `Network ${row.name} is used by VM(s) ${users.map((u) => u.name).join(', ')}; delete those VMs first`);
      }
      const failures = await this.#clearUnneeded(row.id, { carriers: [] });
      const now = Date.now();
      const up = failures.filter(({ host }) => now - Date.parse(host.last_seen_at) <= HOST_OFFLINE_AFTER_MS);
      if (up.length > 0) {
        const { host, error } = up[0];
        throw new NubisError('NET_UNPLUG_FAILED', `Host ${host.name} could not remove network ${row.name}: ${messageOf(error)}; try again`, { cause: error });
      }
      await this.#db.transaction().execute(async (trx) => {
        await trx.deleteFrom('network_hosts').where('network_id', '=', row.id).execute();
        await trx.deleteFrom('networks').where('id', '=', row.id).execute();
      });
      publishChange(this.#db, 'network', 'deleted', row.id, { name: row.name, projectId: row.project_id });
    });
  }

  /** Forwards `hostPort` on the network's NAT gateway host to `vmPort` of a VM on the network. */
  async addForward(
    ref: string,
    request: { protocol: 'tcp' | 'udp'; hostPort: number; vmId: string; vmName: string; vmPort: number },
    project?: string,
  ): Promise<PortForwardView> {
    const network = await this.row(ref, project);
    if (!network.nat) throw new NubisError('NET_NO_NAT', `Network ${network.name} has no NAT gateway; port forwards need one (network create --nat)`);
    if (!(await this.#db.selectFrom('nics').select('id').where('vm_id', '=', request.vmId).where('network_id', '=', network.id).executeTakeFirst())) {
      throw new NubisError('NET_INVALID_PORT_FORWARD', `VM ${request.vmName} has no NIC on network ${network.name}`);
    }
    if (
      await this.#db
        .selectFrom('port_forwards')
        .select('id')
        .where('network_id', '=', network.id)
        .where('protocol', '=', request.protocol)
        .where('host_port', '=', request.hostPort)
        .executeTakeFirst()
    ) {
      throw new NubisError(
        'NET_PORT_FORWARD_TAKEN',
        `Port ${request.hostPort}/${request.protocol} of network ${network.name} is already forwarded; choose another`,
      );
    }
    const row = {
      id: newId('fwd'),
      network_id: network.id,
      protocol: request.protocol,
      host_port: request.hostPort,
      vm_id: request.vmId,
      vm_port: request.vmPort,
      created_at: new Date().toISOString(),
    };
    // The gateway may refuse it (e.g. another network's forward holds the port on that host):
    // then the record goes and the hosts are told again; an undo that fails travels with the error.
    await Revert.run(async (revert) => {
      await auditedTransaction(this.#db, async (trx) => {
        await enforceQuota(trx, network.project_id, project ?? 'default', { portForwards: 1 });
        await trx.insertInto('port_forwards').values(row).execute();
      });
      revert.add(`forget forward ${request.hostPort}/${request.protocol}`, async () => {
        await this.#db.deleteFrom('port_forwards').where('id', '=', row.id).execute();
        await this.sync(network.id);
      });
      await this.sync(network.id);
    });
    return (await this.forwards(ref, project)).find((f) => f.id === row.id)!;
  }

  async deleteForward(ref: string, protocol: 'tcp' | 'udp', hostPort: number, project?: string): Promise<void> {
    const network = await this.row(ref, project);
    const deleted = await this.#db
      .deleteFrom('port_forwards')
      .where('network_id', '=', network.id)
      .where('protocol', '=', protocol)
      .where('host_port', '=', hostPort)
      .executeTakeFirst();
    if (Number(deleted.numDeletedRows) === 0)
      throw new NubisError('NET_PORT_FORWARD_NOT_FOUND', `Network ${network.name} forwards no port ${hostPort}/${protocol}`);
    await this.sync(network.id);
  }

  /** The forwards of a network, with the address they listen on (the gateway host's underlay). */
  async forwards(ref: string, project?: string): Promise<PortForwardView[]> {
    const network = await this.row(ref, project);
    // The gateway runs on the network's service host (network-carriers.ts).
    const listenHost = network.service_host_id
      ? await this.#db.selectFrom('hosts').selectAll().where('id', '=', network.service_host_id).executeTakeFirst()
      : undefined;
    const rows = await this.#db
      .selectFrom('port_forwards')
      .innerJoin('vms', 'vms.id', 'port_forwards.vm_id')
      .selectAll('port_forwards')
      .select('vms.name as vm_name')
      .where('network_id', '=', network.id)
      .orderBy('host_port')
      .execute();
    return rows.map((r) => ({
      id: r.id,
      protocol: r.protocol,
      hostPort: r.host_port,
      vm: r.vm_name,
      vmPort: r.vm_port,
      ...(listenHost?.underlay_ip ? { listenAddress: listenHost.underlay_ip, host: listenHost.name } : {}),
    }));
  }

  /** Drops the forwards to a VM that is going away. */
  /** Drops a deleted VM's port forwards (`db`: the caller's transaction, if any). */
  async dropForwardsOf(vmId: string, db: Db = this.#db): Promise<void> {
    await db.deleteFrom('port_forwards').where('vm_id', '=', vmId).execute();
  }

  /**
   * Gives a VM a NIC on `network`: a fresh MAC and the requested or the lowest free IP. Refuses an
   * address outside the subnet or already held. Runs inside the caller's transaction-free flow,
   * so the caller removes the NICs again when a later step fails (`releaseNics`).
   */
  async allocateNic(network: NetworksTable, vmId: string, deviceIndex: number, requestedIp?: string): Promise<NicsTable> {
    const subnet = parseSubnet(network.subnet);
    // The free address is chosen and taken in one write transaction: creates running at once
    // would otherwise each see the same address free.
    return writeTransaction(this.#db, async (trx) => {
      const held = await trx.selectFrom('nics').select('ip').where('network_id', '=', network.id).execute();
      const taken = new Set(held.map((nic) => parseIpv4(nic.ip)!));
      for (const reserved of [network.gateway, network.dhcp_address]) if (reserved) taken.add(parseIpv4(reserved)!);
      let address: number;
      if (requestedIp) {
        address = checkAddress(subnet, requestedIp);
        if (taken.has(address))
          throw new NubisError('NET_ADDRESS_TAKEN', `Address ${requestedIp} on network ${network.name} is taken; choose another or leave --ip out`);
      } else {
        address = firstFreeAddress(subnet, taken);
      }
      const nic: NicsTable = {
        id: newId('nic'),
        vm_id: vmId,
        network_id: network.id,
        device_index: deviceIndex,
        mac: newMac(),
        ip: formatIpv4(address),
        created_at: new Date().toISOString(),
      };
      await trx.insertInto('nics').values(nic).execute();
      return nic;
    });
  }

  async nicsOf(vmId: string): Promise<NicsTable[]> {
    return this.#db.selectFrom('nics').selectAll().where('vm_id', '=', vmId).orderBy('device_index').execute();
  }

  /** Frees a VM's NICs and their addresses (`db`: the caller's transaction, if any). */
  async releaseNics(vmId: string, db: Db = this.#db): Promise<void> {
    await db.deleteFrom('nics').where('vm_id', '=', vmId).execute();
  }

  /** Hosts that carry the network, by name: see network-carriers.ts for who needs it where. */
  async hostsOf(networkId: string): Promise<HostsTable[]> {
    const network = await this.#db.selectFrom('networks').selectAll().where('id', '=', networkId).executeTakeFirst();
    return network ? (await this.#carriers.of(network)).carriers.map((carrier) => carrier.host) : [];
  }

  /**
   * Brings the network's plumbing in step with where it is needed: hosts that no longer need it
   * lose it first (a DHCP server or gateway that moves never runs twice at once), then every host
   * that carries it is told its spec (bridge, VXLAN, peers, zone, DHCP, NAT). Called after a VM
   * with a NIC on it is placed, started, moved or deleted, and when a probe or migration lets go.
   */
  sync(networkId: string, signal?: AbortSignal): Promise<void> {
    // One change of a network at a time, each computing the placement afresh: two interleaved
    // syncs (say, of two VMs migrating at once) could otherwise apply an older view last.
    return this.#syncQueue.run(networkId, async () => {
      const network = await this.#db.selectFrom('networks').selectAll().where('id', '=', networkId).executeTakeFirst();
      if (!network) return;
      const placement = await this.#carriers.of(network);
      const serviceHostId = placement.serviceHost?.id ?? null;
      if (serviceHostId !== network.service_host_id) {
        await this.#db.updateTable('networks').set({ service_host_id: serviceHostId }).where('id', '=', networkId).execute();
      }
      await this.#clearUnneeded(networkId, placement);
      for (const { host, spec } of (await this.#carriers.specs(network, placement)).values()) {
        // Recorded before it is applied: a host left half-plumbed is still cleared later.
        await this.#db
          .insertInto('network_hosts')
          .values({ network_id: networkId, host_id: host.id })
          .onConflict((oc) => oc.doNothing())
          .execute();
        await this.#hosts.agent(host).applyNetwork(spec, { timeoutMs: 30_000, signal });
      }
      publishChange(this.#db, 'network', 'updated', networkId);
    });
  }

  /**
   * Removes the network from `host` unless the host still needs it (a VM, its DHCP server or
   * gateway, a probe, an incoming migration). The other hosts learn of it at the next sync.
   */
  unplugHost(networkId: string, host: HostsTable): Promise<void> {
    return this.#syncQueue.run(networkId, async () => {
      const network = await this.#db.selectFrom('networks').selectAll().where('id', '=', networkId).executeTakeFirst();
      if (network) await this.#clearUnneeded(networkId, await this.#carriers.of(network), [host]);
    });
  }

  /**
   * Takes the network off every host it was plumbed on (and `alsoFrom`) that is not in
   * `placement`. A host that cannot be reached keeps its record, so the next sync (or the
   * network's delete) tries again: nothing it runs for the network is forgotten. Resolves with
   * the hosts that failed and why.
   */
  async #clearUnneeded(networkId: string, placement: NetworkPlacement, alsoFrom: HostsTable[] = []): Promise<Array<{ host: HostsTable; error: unknown }>> {
    const plumbed = await this.#db
      .selectFrom('hosts')
      .innerJoin('network_hosts', 'network_hosts.host_id', 'hosts.id')
      .selectAll('hosts')
      .where('network_hosts.network_id', '=', networkId)
      .execute();
    const needed = new Set(placement.carriers.map((carrier) => carrier.host.id));
    // A fenced host is unreachable by definition: its record stays, and it is cleared when it is back.
    const stale = new Map([...plumbed, ...alsoFrom].filter((host) => !needed.has(host.id) && !host.fenced_at).map((host) => [host.id, host]));
    const failures: Array<{ host: HostsTable; error: unknown }> = [];
    for (const host of stale.values()) {
      try {
        await this.#hosts.agent(host).removeNetwork(networkId, { timeoutMs: 30_000 });
        await this.#db.deleteFrom('network_hosts').where('network_id', '=', networkId).where('host_id', '=', host.id).execute();
      } catch (error) {
        failures.push({ host, error });
      }
    }
    return failures;
  }

  /**
   * Keeps the network on `hostId` until the returned function is called, as for a VM migrating
   * there: the host is a carrier meanwhile, also for syncs that other changes start. The caller
   * syncs the network after taking the hold and after letting it go.
   */
  hold(networkId: string, hostId: string, role: 'probe' | 'migration'): () => void {
    return this.#carriers.hold(networkId, hostId, role);
  }

  /**
   * Runs a diagnostic command in a temporary namespace plugged into the network, on `host` or the
   * first host carrying it, with a free address of the subnet. The host keeps the network while
   * the probe runs, whatever leaves it meanwhile (a migration, a deleted VM).
   */
  async probe(
    ref: string,
    project: string | undefined,
    request: { host?: string; command: string[]; timeoutSeconds: number },
  ): Promise<{ host: string; address: string; exitCode: number; stdout: string; stderr: string }> {
    const network = await this.row(ref, project);
    // Chosen and held in the network's queue: no unplug can come between the choice and the hold.
    const { host, release } = await this.#syncQueue.run(network.id, async () => {
      const chosen = await this.probeHost(network, request.host);
      return { host: chosen, release: this.#carriers.hold(network.id, chosen.id, 'probe') };
    });
    try {
      const { address, prefixLength } = await this.probeAddress(network);
      const result = await this.#hosts.agent(host).probe(
        network.id,
        {
          address: `${address}/${prefixLength}`,
          ...(network.gateway ? { gateway: network.gateway } : {}),
          command: request.command,
          timeoutMs: request.timeoutSeconds * 1000,
        },
        { timeoutMs: request.timeoutSeconds * 1000 + 15_000 },
      );
      return { host: host.name, address, ...result };
    } finally {
      release();
      // Only when the probe was all that kept the network there is there anything to change.
      if (!(await this.hostsOf(network.id)).some((carrier) => carrier.id === host.id)) await this.sync(network.id).catch(() => undefined);
    }
  }

  /** A host carrying the network, for probes: the given one, or the first. */
  async probeHost(network: NetworksTable, hostName?: string): Promise<HostsTable> {
    const hosts = (await this.#carriers.of(network)).carriers.map((carrier) => carrier.host);
    const host = hostName ? hosts.find((h) => h.name === hostName) : hosts[0];
    if (!host)
      throw new NubisError(
        'NET_NOT_PLUMBED',
        hostName
          ? `Host ${hostName} does not carry this network (no VM, DHCP server or gateway of it runs there); probe from one that does`
          : 'No VM uses this network yet, so no host carries it; create a VM on it first',
      );
    return host;
  }

  /** A free address for a temporary probe: the highest free one, so VMs keep the low ones. */
  async probeAddress(network: NetworksTable): Promise<{ address: string; prefixLength: number }> {
    const subnet = parseSubnet(network.subnet);
    const held = await this.#db.selectFrom('nics').select('ip').where('network_id', '=', network.id).execute();
    const taken = new Set(held.map((nic) => parseIpv4(nic.ip)!));
    for (const reserved of [network.gateway, network.dhcp_address]) if (reserved) taken.add(parseIpv4(reserved)!);
    for (let address = subnet.network + 2 ** (32 - subnet.prefixLength) - 2; address > subnet.network; address--) {
      if (!taken.has(address)) return { address: formatIpv4(address), prefixLength: subnet.prefixLength };
    }
    throw new NubisError('NET_SUBNET_FULL', `Network ${network.name} has no free address for a probe`);
  }
}
