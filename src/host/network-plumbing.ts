/**
 * The host agent's side of virtual networks: it plumbs a network on its host when the control
 * plane says the host carries it (bridge, VXLAN device, flood peers, the DHCP server where this
 * host serves it), plugs VM NICs in as taps, and runs diagnostic probes. The devices themselves
 * are made by the network driver in src/network.
 */
import { NubisError } from '../core/errors.ts';
import type { VmSpec } from '../compute/vm-spec.ts';
import { tapNameFor } from '../network/names.ts';
import { createTap, deleteTap, ensureNetworkOnHost, removeNetworkFromHost, setPeers } from '../network/overlay.ts';
import { runProbe } from '../network/probe.ts';

/** What the control plane sends for one network (see HostNetworkSpec in src/control/networks.ts). */
export interface HostNetworkSpec {
  id: string;
  vni: number;
  mtu: number;
  peers: string[];
  dhcp?: { address: string; prefixLength: number; gateway?: string; hosts: Array<{ mac: string; ip: string; name: string }> };
}

/** The DHCP side, provided by src/network/dhcp.ts once it is wired (optional: static networks work without it). */
export interface DhcpDriver {
  ensure(options: { hostNs: string; networkKey: string; address: string; gateway?: string; hosts: Array<{ mac: string; ip: string; name: string }>; stateDir: string }): Promise<void>;
  stop(options: { hostNs: string; networkKey: string; stateDir: string }): Promise<void>;
}

export class NetworkPlumbing {
  readonly #hostNs?: string;
  readonly #underlayIp?: string;
  readonly #stateDir: string;
  readonly #dhcp?: DhcpDriver;

  constructor(options: { hostNs?: string; underlayIp?: string; stateDir: string; dhcp?: DhcpDriver }) {
    this.#hostNs = options.hostNs;
    this.#underlayIp = options.underlayIp;
    this.#stateDir = options.stateDir;
    this.#dhcp = options.dhcp;
  }

  /** The host namespace and underlay address; virtual networks need both. */
  #where(): { hostNs: string; underlayIp: string } {
    if (!this.#hostNs || !this.#underlayIp) {
      throw new NubisError('NET_NO_UNDERLAY', 'This host has no underlay, so it cannot carry virtual networks; start Nubis as root with nubis up --hosts 2 (or --netns), which gives every host a namespace and an underlay link');
    }
    return { hostNs: this.#hostNs, underlayIp: this.#underlayIp };
  }

  /** Makes the network present and its peers and DHCP exactly as the spec says. Idempotent. */
  async apply(spec: HostNetworkSpec): Promise<{ bridge: string; vxlan: string }> {
    const { hostNs, underlayIp } = this.#where();
    const devices = await ensureNetworkOnHost({ hostNs, networkKey: spec.id, vni: spec.vni, localUnderlayIp: underlayIp, mtu: spec.mtu });
    await setPeers({ hostNs, networkKey: spec.id, peerUnderlayIps: spec.peers });
    if (spec.dhcp) {
      if (!this.#dhcp) throw new NubisError('NET_DHCP_UNAVAILABLE', 'This agent has no DHCP driver; use a network without --dhcp');
      await this.#dhcp.ensure({ hostNs, networkKey: spec.id, address: `${spec.dhcp.address}/${spec.dhcp.prefixLength}`, gateway: spec.dhcp.gateway, hosts: spec.dhcp.hosts, stateDir: this.#stateDir });
    } else {
      await this.#dhcp?.stop({ hostNs, networkKey: spec.id, stateDir: this.#stateDir });
    }
    return { bridge: devices.bridge, vxlan: devices.vxlan };
  }

  /** Removes the network (and its DHCP server) from this host. */
  async remove(networkId: string): Promise<void> {
    const { hostNs } = this.#where();
    await this.#dhcp?.stop({ hostNs, networkKey: networkId, stateDir: this.#stateDir });
    await removeNetworkFromHost({ hostNs, networkKey: networkId });
  }

  /** Creates the taps of a VM's network NICs and names them in the spec QEMU is started from. */
  async plugNics(spec: VmSpec): Promise<VmSpec> {
    const tapNics = spec.nics.filter((nic) => nic.mode === 'tap' && nic.network);
    if (tapNics.length === 0) return spec;
    const { hostNs } = this.#where();
    const plugged: string[] = [];
    try {
      const nics = [];
      for (const nic of spec.nics) {
        if (nic.mode !== 'tap' || !nic.network) {
          nics.push(nic);
          continue;
        }
        const tapName = tapNameFor(`${spec.id}-${nic.id}`);
        await createTap({ hostNs, networkKey: nic.network.id, tapName, mtu: nic.network.mtu });
        plugged.push(tapName);
        nics.push({ ...nic, tapName });
      }
      return { ...spec, nics };
    } catch (error) {
      for (const tapName of plugged) await deleteTap({ hostNs, tapName }).catch(() => undefined);
      throw error;
    }
  }

  /** Deletes the taps of a VM that is gone. */
  async unplugNics(spec: VmSpec): Promise<void> {
    if (!this.#hostNs) return;
    for (const nic of spec.nics) if (nic.tapName) await deleteTap({ hostNs: this.#hostNs, tapName: nic.tapName }).catch(() => undefined);
  }

  /** Runs a command in a throw-away namespace plugged into the network on this host. */
  async probe(networkId: string, request: { address: string; gateway?: string; command: string[]; timeoutMs: number }): Promise<{ exitCode: number; stdout: string; stderr: string }> {
    const { hostNs } = this.#where();
    return runProbe({ hostNs, networkKey: networkId, address: request.address, gateway: request.gateway, command: request.command, timeoutMs: request.timeoutMs });
  }
}
