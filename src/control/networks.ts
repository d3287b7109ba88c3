/**
 * Virtual networks in the control plane: their records, IPAM (every NIC gets a MAC and an IP
 * that stay with it for its life), and keeping each host's plumbing in step: which hosts carry a
 * network, their VXLAN peers, and the network's DHCP server with its fixed leases.
 */
import { sql, type Transaction } from 'kysely';
import { NubisError } from '../core/errors.ts';
import { projectIdByName, type VisibleProjects } from './projects.ts';
import { enforceQuota } from '../access/quotas.ts';
import { auditedTransaction } from '../audit/audit-context.ts';
import { newId, newMac } from '../core/ids.ts';
import { Revert } from '../core/revert.ts';
import type { Db } from '../state/database.ts';
import type { Database, HostsTable, NetworksTable, NicsTable } from '../state/schema.ts';
import type { HostNetworkSpec } from '../agent-api/contract.ts';
import { KeyedSerialQueue } from '../core/serial-queue.ts';
import type { HostRegistry } from './hosts.ts';
import { checkAddress, firstFreeAddress, formatIpv4, parseIpv4, parseSubnet, subnetsOverlap } from './ipam.ts';

/** VNIs Nubis hands out start here; lower ones are left for explicit choice. */
const FIRST_AUTO_VNI = 1000;
const MAX_VNI = 16_777_215;
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
  readonly #syncQueue = new KeyedSerialQueue();

  constructor(deps: { db: Db; hosts: HostRegistry }) {
    this.#db = deps.db;
    this.#hosts = deps.hosts;
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
      created_at: new Date().toISOString(),
    };
    // Name, subnet, VNI and quota are checked in the transaction that records the network: two
    // creates at once cannot both take the same name or VNI.
    await auditedTransaction(this.#db, async (trx) => {
      await this.#refuseClashes(trx, projectId, request, subnet);
      row.vni = await this.#vniFor(trx, request.vni);
      await enforceQuota(trx, projectId, request.project ?? 'default', { networks: 1 });
      await trx.insertInto('networks').values(row).execute();
    });
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

  /** Deletes a network no NIC uses, and removes its plumbing from every host. */
  async delete(ref: string, project?: string): Promise<void> {
    const row = await this.row(ref, project);
    const users = await this.#db.selectFrom('nics').innerJoin('vms', 'vms.id', 'nics.vm_id').select('vms.name').where('nics.network_id', '=', row.id).execute();
    if (users.length > 0) {
      throw new NubisError('NET_IN_USE', `Network ${row.name} is used by VM(s) ${users.map((u) => u.name).join(', ')}; delete those VMs first`);
    }
    await this.#db.deleteFrom('networks').where('id', '=', row.id).execute();
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
    const listenHost = (await this.hostsOf(network.id))[0];
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
    const held = await this.#db.selectFrom('nics').select('ip').where('network_id', '=', network.id).execute();
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
    await this.#db.insertInto('nics').values(nic).execute();
    return nic;
  }

  async nicsOf(vmId: string): Promise<NicsTable[]> {
    return this.#db.selectFrom('nics').selectAll().where('vm_id', '=', vmId).orderBy('device_index').execute();
  }

  /** Frees a VM's NICs and their addresses (`db`: the caller's transaction, if any). */
  async releaseNics(vmId: string, db: Db = this.#db): Promise<void> {
    await db.deleteFrom('nics').where('vm_id', '=', vmId).execute();
  }

  /** Hosts that carry the network: those with a VM that has a NIC on it. */
  async hostsOf(networkId: string): Promise<HostsTable[]> {
    return this.#db
      .selectFrom('hosts')
      .selectAll('hosts')
      .where('hosts.id', 'in', (eb) =>
        eb.selectFrom('nics').innerJoin('vms', 'vms.id', 'nics.vm_id').select('vms.host_id').where('nics.network_id', '=', networkId),
      )
      .orderBy('hosts.name')
      .execute();
  }

  /** What each host carrying the network needs, keyed by host id. */
  async hostSpecs(networkId: string, alsoHostIds: string[] = []): Promise<Map<string, { host: HostsTable; spec: HostNetworkSpec }>> {
    const network = await this.#db.selectFrom('networks').selectAll().where('id', '=', networkId).executeTakeFirstOrThrow();
    const hosts = await this.hostsOf(networkId);
    for (const id of alsoHostIds) {
      if (!hosts.some((host) => host.id === id)) hosts.push(await this.#db.selectFrom('hosts').selectAll().where('id', '=', id).executeTakeFirstOrThrow());
    }
    const specs = new Map<string, { host: HostsTable; spec: HostNetworkSpec }>();
    const subnet = parseSubnet(network.subnet);
    const leases = network.dhcp
      ? await this.#db
          .selectFrom('nics')
          .innerJoin('vms', 'vms.id', 'nics.vm_id')
          .select(['nics.mac', 'nics.ip', 'vms.name'])
          .where('nics.network_id', '=', networkId)
          .execute()
      : [];
    const forwards = network.nat
      ? (
          await this.#db
            .selectFrom('port_forwards')
            .innerJoin('nics', (join) => join.onRef('nics.vm_id', '=', 'port_forwards.vm_id').onRef('nics.network_id', '=', 'port_forwards.network_id'))
            .select(['port_forwards.protocol', 'port_forwards.host_port', 'port_forwards.vm_port', 'nics.ip'])
            .where('port_forwards.network_id', '=', networkId)
            .execute()
        ).map((f) => ({ protocol: f.protocol, hostPort: f.host_port, vmIp: f.ip, vmPort: f.vm_port }))
      : [];
    hosts.forEach((host, index) => {
      const peers = hosts.filter((other) => other.id !== host.id && other.underlay_ip).map((other) => other.underlay_ip!);
      const spec: HostNetworkSpec = { id: network.id, vni: network.vni, mtu: network.mtu, peers };
      // One NAT gateway per network, on the first host carrying it (like a network node).
      if (network.nat && index === 0 && network.gateway) {
        spec.nat = { gatewayCidr: `${network.gateway}/${subnet.prefixLength}`, subnet: subnet.cidr, forwards };
      }
      // One DHCP server per network, on the first host carrying it.
      if (network.dhcp && index === 0 && network.dhcp_address) {
        spec.dhcp = {
          subnet: subnet.cidr,
          serverIp: network.dhcp_address,
          ...(network.gateway ? { gateway: network.gateway } : {}),
          hosts: leases.map((l) => ({ mac: l.mac, ip: l.ip, name: l.name })),
        };
      }
      specs.set(host.id, { host, spec });
    });
    return specs;
  }

  /**
   * Brings every host carrying the network in step (bridge, VXLAN, peers, DHCP). Called after a
   * VM with a NIC on it is placed, started, moved or deleted; `alsoHostIds` plumbs hosts about
   * to carry it (the destination of a migration).
   */
  sync(networkId: string, signal?: AbortSignal, alsoHostIds: string[] = []): Promise<void> {
    // One sync of a network at a time, each computing the specs afresh: two interleaved syncs
    // (say, of two VMs migrating at once) could otherwise apply an older view last.
    return this.#syncQueue.run(networkId, async () => {
      for (const { host, spec } of (await this.hostSpecs(networkId, alsoHostIds)).values()) {
        await this.#hosts.agent(host).applyNetwork(spec, { timeoutMs: 30_000, signal });
      }
    });
  }

  /** Removes the network's plumbing from a host that no longer carries it. */
  async unplugHost(networkId: string, host: HostsTable): Promise<void> {
    if ((await this.hostsOf(networkId)).some((h) => h.id === host.id)) return;
    await this.#hosts
      .agent(host)
      .removeNetwork(networkId, { timeoutMs: 30_000 })
      .catch(() => undefined);
  }

  /**
   * Runs a diagnostic command in a temporary namespace plugged into the network, on `host` or the
   * first host carrying it, with a free address of the subnet.
   */
  async probe(
    ref: string,
    project: string | undefined,
    request: { host?: string; command: string[]; timeoutSeconds: number },
  ): Promise<{ host: string; address: string; exitCode: number; stdout: string; stderr: string }> {
    const network = await this.row(ref, project);
    const host = await this.probeHost(network.id, request.host);
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
  }

  /** A host carrying the network, for probes: the given one, or the first. */
  async probeHost(networkId: string, hostName?: string): Promise<HostsTable> {
    const hosts = await this.hostsOf(networkId);
    const host = hostName ? hosts.find((h) => h.name === hostName) : hosts[0];
    if (!host)
      throw new NubisError(
        'NET_NOT_PLUMBED',
        hostName
          ? `Host ${hostName} carries no VM on this network; probe from one that does`
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
