/**
 * Which hosts carry a virtual network, and why: the one place that decides it. A host carries a
 * network while any of these holds there:
 * - `vm`: a VM with a NIC on the network is placed there;
 * - `service`: it runs the network's DHCP server and NAT gateway (the service host);
 * - `probe`: a `network probe` runs there;
 * - `migration`: a VM with a NIC on the network is migrating there.
 * The service host stays where it is while VMs come and go, so a DHCP server's leases and a
 * gateway's forwards (and the address clients reach them at) do not move with every migration;
 * it moves only when its host is offline or in maintenance and a VM's host that is up can take it.
 */
import { parseSubnet } from './ipam.ts';
import { HOST_OFFLINE_AFTER_MS } from './hosts.ts';
import type { HostNetworkSpec } from '../agent-api/contract.ts';
import type { Db } from '../state/database.ts';
import type { HostsTable, NetworksTable } from '../state/schema.ts';

/** Why a host carries a network. */
export type CarrierRole = 'vm' | 'service' | 'probe' | 'migration';

/** A host that carries a network, with its reasons. */
export interface NetworkCarrier {
  host: HostsTable;
  roles: CarrierRole[];
}

/** The hosts a network needs, sorted by name, and the one that runs its DHCP server and gateway. */
export interface NetworkPlacement {
  carriers: NetworkCarrier[];
  serviceHost?: HostsTable;
}

/** A hold that keeps a network on a host for a while (a probe, an incoming migration). */
interface Hold {
  hostId: string;
  role: 'probe' | 'migration';
}

export class NetworkCarriers {
  readonly #db: Db;
  /**
   * Holds per network id. In memory: a probe or a migration ends with the control plane that
   * runs it, and so does its hold.
   */
  readonly #holds = new Map<string, Hold[]>();

  constructor(db: Db) {
    this.#db = db;
  }

  /** Keeps the network on the host until the returned function is called (idempotent). */
  hold(networkId: string, hostId: string, role: Hold['role']): () => void {
    const hold: Hold = { hostId, role };
    this.#holds.set(networkId, [...(this.#holds.get(networkId) ?? []), hold]);
    return () => {
      const left = (this.#holds.get(networkId) ?? []).filter((other) => other !== hold);
      if (left.length > 0) this.#holds.set(networkId, left);
      else this.#holds.delete(networkId);
    };
  }

  /** Where the network is needed now, and its service host (recorded or newly elected). */
  async of(network: NetworksTable): Promise<NetworkPlacement> {
    const vmHosts = await this.#db
      .selectFrom('hosts')
      .selectAll('hosts')
      .where('hosts.id', 'in', (eb) =>
        eb.selectFrom('nics').innerJoin('vms', 'vms.id', 'nics.vm_id').select('vms.host_id').where('nics.network_id', '=', network.id),
      )
      // A fenced host carries nothing: the other hosts' overlays stop forwarding to it.
      .where('hosts.fenced_at', 'is', null)
      .orderBy('hosts.name')
      .execute();
    const holds = this.#holds.get(network.id) ?? [];
    const otherIds = [...new Set([...holds.map((hold) => hold.hostId), ...(network.service_host_id ? [network.service_host_id] : [])])];
    const others =
      otherIds.length > 0 ? await this.#db.selectFrom('hosts').selectAll().where('id', 'in', otherIds).where('fenced_at', 'is', null).execute() : [];
    const recorded = others.find((host) => host.id === network.service_host_id);
    const serviceHost = electServiceHost(network, recorded, vmHosts, Date.now());
    const carriers = new Map<string, NetworkCarrier>();
    const add = (host: HostsTable | undefined, role: CarrierRole): void => {
      if (!host) return;
      const carrier = carriers.get(host.id) ?? { host, roles: [] };
      if (!carrier.roles.includes(role)) carrier.roles.push(role);
      carriers.set(host.id, carrier);
    };
    for (const host of vmHosts) add(host, 'vm');
    add(serviceHost, 'service');
    for (const hold of holds)
      add(
        others.find((host) => host.id === hold.hostId),
        hold.role,
      );
    return {
      carriers: [...carriers.values()].sort((a, b) => a.host.name.localeCompare(b.host.name)),
      ...(serviceHost ? { serviceHost } : {}),
    };
  }

  /** What each carrier of the network is told to apply, keyed by host id. */
  async specs(network: NetworksTable, placement: NetworkPlacement): Promise<Map<string, { host: HostsTable; spec: HostNetworkSpec }>> {
    const subnet = parseSubnet(network.subnet);
    const service = placement.serviceHost;
    const leases =
      network.dhcp && service
        ? await this.#db
            .selectFrom('nics')
            .innerJoin('vms', 'vms.id', 'nics.vm_id')
            .select(['nics.mac', 'nics.ip', 'vms.name'])
            .where('nics.network_id', '=', network.id)
            .execute()
        : [];
    const forwards = network.nat && service ? await this.#forwards(network.id) : [];
    const specs = new Map<string, { host: HostsTable; spec: HostNetworkSpec }>();
    for (const { host } of placement.carriers) {
      const peers = placement.carriers.filter((other) => other.host.id !== host.id && other.host.underlay_ip).map((other) => other.host.underlay_ip!);
      const spec: HostNetworkSpec = { id: network.id, vni: network.vni, mtu: network.mtu, ctZone: network.ct_zone, peers };
      if (host.id === service?.id && network.nat && network.gateway) {
        spec.nat = { gatewayCidr: `${network.gateway}/${subnet.prefixLength}`, subnet: subnet.cidr, forwards };
      }
      if (host.id === service?.id && network.dhcp && network.dhcp_address) {
        spec.dhcp = {
          subnet: subnet.cidr,
          serverIp: network.dhcp_address,
          ...(network.gateway ? { gateway: network.gateway } : {}),
          hosts: leases.map((lease) => ({ mac: lease.mac, ip: lease.ip, name: lease.name })),
        };
      }
      specs.set(host.id, { host, spec });
    }
    return specs;
  }

  async #forwards(networkId: string): Promise<NonNullable<HostNetworkSpec['nat']>['forwards']> {
    const rows = await this.#db
      .selectFrom('port_forwards')
      .innerJoin('nics', (join) => join.onRef('nics.vm_id', '=', 'port_forwards.vm_id').onRef('nics.network_id', '=', 'port_forwards.network_id'))
      .select(['port_forwards.protocol', 'port_forwards.host_port', 'port_forwards.vm_port', 'nics.ip'])
      .where('port_forwards.network_id', '=', networkId)
      .execute();
    return rows.map((f) => ({ protocol: f.protocol, hostPort: f.host_port, vmIp: f.ip, vmPort: f.vm_port }));
  }
}

/** True when the host reported recently and is not in maintenance: it can run a network's services. */
function isUp(host: HostsTable, nowMs: number): boolean {
  return host.maintenance === 0 && !host.fenced_at && nowMs - Date.parse(host.last_seen_at) <= HOST_OFFLINE_AFTER_MS;
}

/**
 * The host for a network's DHCP server and NAT gateway (none when it has neither): the recorded
 * one while it is up; else the first of its VMs' hosts that is up; else the recorded one still
 * (nowhere better to go), else the first VM host. Pure.
 */
export function electServiceHost(
  network: Pick<NetworksTable, 'dhcp' | 'nat'>,
  recorded: HostsTable | undefined,
  vmHosts: readonly HostsTable[],
  nowMs: number,
): HostsTable | undefined {
  if (!network.dhcp && !network.nat) return undefined;
  if (recorded && isUp(recorded, nowMs)) return recorded;
  return vmHosts.find((host) => isUp(host, nowMs)) ?? recorded ?? vmHosts[0];
}
