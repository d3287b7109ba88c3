/**
 * The host agent's side of virtual networks: it plumbs a network on its host when the control
 * plane says the host carries it (bridge, VXLAN device, flood peers, its conntrack zone, the DHCP
 * server and NAT gateway where this host runs them), plugs VM NICs in as taps, and runs
 * diagnostic probes. The devices themselves are made by the network driver in src/network.
 */
import { existsSync } from 'node:fs';
import { chmod, mkdir, rm } from 'node:fs/promises';
import type { HostNetworkSpec } from '../agent-api/contract.ts';
import { join } from 'node:path';
import { NubisError, isNubisError } from '../core/errors.ts';
import { KeyedSerialQueue } from '../core/serial-queue.ts';
import type { NicFirewallSpec, VmSpec } from '../compute/vm-spec.ts';
import { removeConntrackZone, setConntrackZone } from '../network/conntrack-zones.ts';
import { applyPortFirewall, removePortFirewall } from '../network/firewall.ts';
import { applyNicBandwidth, removeNicBandwidth } from '../network/nic-bandwidth.ts';
import { tapNameFor } from '../network/names.ts';
import { createTap, deleteTap, ensureNetworkOnHost, removeNetworkFromHost, setPeers } from '../network/overlay.ts';
import { runProbe } from '../network/probe.ts';
import { ensureDhcp, stopDhcp } from '../network/dhcp.ts';
import { ensureGateway, removeGateway, setPortForwards } from '../network/gateway.ts';

/**
 * Where a host keeps its DHCP servers' files. Not in the data folder: dnsmasq drops root and must
 * still read its hosts file, and the data folder (tokens) is private to root. Under /run they
 * vanish with a reboot, when the agent writes them again.
 */
export const DHCP_STATE_ROOT = '/run/nubis';

export class NetworkPlumbing {
  readonly #hostNs?: string;
  readonly #underlayIp?: string;
  /** One change at a time per network: concurrent FDB or DHCP edits would trip over each other. */
  readonly #queue = new KeyedSerialQueue();

  constructor(options: { hostNs?: string; underlayIp?: string }) {
    this.#hostNs = options.hostNs;
    this.#underlayIp = options.underlayIp;
  }

  #dhcpStateDir(hostNs: string, networkId: string): string {
    return join(DHCP_STATE_ROOT, hostNs, networkId);
  }

  /** The host namespace and underlay address; virtual networks need both. */
  #where(): { hostNs: string; underlayIp: string } {
    if (!this.#hostNs || !this.#underlayIp) {
      throw new NubisError(
        'NET_NO_UNDERLAY',
        'This host has no underlay, so it cannot carry virtual networks; start Nubis as root with nubis up --hosts 2 (or --netns), which gives every host a namespace and an underlay link',
      );
    }
    return { hostNs: this.#hostNs, underlayIp: this.#underlayIp };
  }

  /** Makes the network present and its peers and DHCP exactly as the spec says. Idempotent. */
  apply(spec: HostNetworkSpec): Promise<{ bridge: string; vxlan: string }> {
    return this.#queue.run(spec.id, () => this.#apply(spec));
  }

  async #apply(spec: HostNetworkSpec): Promise<{ bridge: string; vxlan: string }> {
    const { hostNs, underlayIp } = this.#where();
    const devices = await ensureNetworkOnHost({ hostNs, networkKey: spec.id, vni: spec.vni, localUnderlayIp: underlayIp, mtu: spec.mtu });
    await setConntrackZone({ hostNs, networkKey: spec.id, zone: spec.ctZone });
    await setPeers({ hostNs, networkKey: spec.id, peerUnderlayIps: spec.peers });
    const stateDir = this.#dhcpStateDir(hostNs, spec.id);
    if (spec.dhcp) {
      await mkdir(stateDir, { recursive: true, mode: 0o755 });
      // dnsmasq re-reads its hosts file as its own user, which must be able to search every
      // folder down to it; mkdir's mode is cut by the agent's umask (0077), so set it outright.
      for (const dir of [DHCP_STATE_ROOT, join(DHCP_STATE_ROOT, hostNs), stateDir]) await chmod(dir, 0o755);
      await ensureDhcp({
        hostNs,
        networkKey: spec.id,
        stateDir,
        subnet: spec.dhcp.subnet,
        serverIp: spec.dhcp.serverIp,
        gateway: spec.dhcp.gateway,
        hosts: spec.dhcp.hosts,
        mtu: spec.mtu,
      });
    } else if (existsSync(stateDir)) {
      // This host served DHCP for the network before (the server moved, or DHCP was turned off).
      await stopDhcp({ hostNs, networkKey: spec.id, stateDir });
      await rm(stateDir, { recursive: true, force: true });
    }
    if (spec.nat) {
      await ensureGateway({ hostNs, networkKey: spec.id, gatewayCidr: spec.nat.gatewayCidr, subnet: spec.nat.subnet, uplinkDevice: 'ul0' });
      await setPortForwards({ hostNs, networkKey: spec.id, forwards: spec.nat.forwards, listenAddress: underlayIp });
    } else {
      await removeGateway({ hostNs, networkKey: spec.id });
    }
    return { bridge: devices.bridge, vxlan: devices.vxlan };
  }

  /** Removes the network (and its DHCP server) from this host. */
  remove(networkId: string): Promise<void> {
    return this.#queue.run(networkId, () => this.#remove(networkId));
  }

  async #remove(networkId: string): Promise<void> {
    const { hostNs } = this.#where();
    const stateDir = this.#dhcpStateDir(hostNs, networkId);
    if (existsSync(stateDir)) {
      await stopDhcp({ hostNs, networkKey: networkId, stateDir });
      await rm(stateDir, { recursive: true, force: true });
    }
    await removeGateway({ hostNs, networkKey: networkId });
    await removeNetworkFromHost({ hostNs, networkKey: networkId });
    await removeConntrackZone({ hostNs, networkKey: networkId });
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
        // The port is filtered before QEMU opens it: the VM never sends or receives unfiltered.
        if (nic.firewall) await applyPortFirewall({ hostNs, tapName, mac: nic.mac, ...nic.firewall });
        if (nic.bandwidth) await applyNicBandwidth({ hostNs, tapName, bandwidth: nic.bandwidth });
        nics.push({ ...nic, tapName });
      }
      return { ...spec, nics };
    } catch (error) {
      for (const tapName of plugged) {
        await removeNicBandwidth({ hostNs, tapName }).catch(() => undefined);
        await removePortFirewall({ hostNs, tapName }).catch(() => undefined);
        await deleteTap({ hostNs, tapName }).catch(() => undefined);
      }
      throw error;
    }
  }

  /** Replaces the firewall of a VM's ports (its security groups or their members changed). */
  async applyFirewalls(spec: VmSpec, firewalls: Array<NicFirewallSpec & { nicId: string }>): Promise<void> {
    const { hostNs } = this.#where();
    for (const firewall of firewalls) {
      const nic = spec.nics.find((candidate) => candidate.id === firewall.nicId);
      if (!nic?.tapName) throw new NubisError('NET_NIC_NOT_FOUND', `VM ${spec.name} has no network NIC ${firewall.nicId} on this host`);
      await applyPortFirewall({
        hostNs,
        tapName: nic.tapName,
        mac: nic.mac,
        ip: firewall.ip,
        ingressRules: firewall.ingressRules,
        allowIngressFrom: firewall.allowIngressFrom,
        egressRules: firewall.egressRules,
      });
    }
  }

  /** Sets the bandwidth limits of a running VM's NIC `nicId` on its tap, as its spec now says. */
  async applyBandwidth(spec: VmSpec, nicId: string): Promise<void> {
    const nic = spec.nics.find((candidate) => candidate.id === nicId);
    if (!nic?.tapName) throw new NubisError('NET_NIC_NOT_FOUND', `VM ${spec.name} has no network NIC ${nicId} on this host`);
    await applyNicBandwidth({ hostNs: this.#where().hostNs, tapName: nic.tapName, bandwidth: nic.bandwidth });
  }

  /** Deletes the taps of a VM that is gone. */
  async unplugNics(spec: VmSpec): Promise<void> {
    if (!this.#hostNs) return;
    for (const nic of spec.nics) {
      if (!nic.tapName) continue;
      await removeNicBandwidth({ hostNs: this.#hostNs, tapName: nic.tapName }).catch(() => undefined);
      await removePortFirewall({ hostNs: this.#hostNs, tapName: nic.tapName }).catch(() => undefined);
      await deleteTap({ hostNs: this.#hostNs, tapName: nic.tapName }).catch(() => undefined);
    }
  }

  /** Runs a command in a throw-away namespace plugged into the network on this host. */
  async probe(
    networkId: string,
    request: { address: string; gateway?: string; command: string[]; timeoutMs: number },
  ): Promise<{ exitCode: number; stdout: string; stderr: string }> {
    const { hostNs } = this.#where();
    try {
      return await runProbe({
        hostNs,
        networkKey: networkId,
        address: request.address,
        gateway: request.gateway,
        command: request.command,
        timeoutMs: request.timeoutMs,
      });
    } catch (error) {
      // The deadline is the caller's own choice: running past it is the command's outcome, not a fault here.
      if (isNubisError(error, 'NET_COMMAND_TIMEOUT'))
        throw new NubisError(
          'NET_PROBE_TIMEOUT',
          `The probe command did not end within ${request.timeoutMs / 1000} s and was killed; give it a longer --timeout`,
          { cause: error },
        );
      throw error;
    }
  }
}
