// The Linux bridge + VXLAN driver for tenant networks. Inside a host namespace each network is a
// bridge with a VXLAN port (own VNI, UDP 4789 over the underlay device); VM taps, the DHCP
// namespace and probes plug into the bridge. Broadcast, unknown unicast and multicast reach the
// other hosts by unicast head-end replication: one all-zero-MAC FDB entry per peer VTEP.
import { NubisError } from '../core/errors.ts';
import { assertIpv4, normalizeMac } from './addresses.ts';
import { bridge, bridgeJson, findLink, ip, listLinks, type CommandOptions } from './ip-command.ts';
import { assertInterfaceName, bridgeNameFor, vxlanNameFor } from './names.ts';
import { Revert } from '../core/revert.ts';
import { DEFAULT_UNDERLAY_DEVICE, deleteLinkIfPresent, type CallOptions } from './underlay.ts';

/** IANA's VXLAN port (RFC 7348); Linux defaults to 8472 unless told. */
export const VXLAN_PORT = 4789;

/**
 * Bytes VXLAN adds over IPv4: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 (RFC 7348).
 * The overlay MTU is the underlay MTU minus this, so a full overlay frame never fragments.
 */
export const VXLAN_OVERHEAD_BYTES = 50;

/** The FDB MAC whose entries say where to flood BUM traffic (one entry per remote VTEP). */
const FLOOD_MAC = '00:00:00:00:00:00';

/** Where a network lives on a host. */
export interface NetworkOnHostKey extends CallOptions {
  /** The host namespace. */
  hostNs: string;
  /** A stable identity of the network (e.g. its id); the device names are derived from it. */
  networkKey: string;
}

/** What {@link ensureNetworkOnHost} needs. */
export interface EnsureNetworkOptions extends NetworkOnHostKey {
  /** VXLAN network identifier, 1..16777215, unique per network across the cloud. */
  vni: number;
  /** This host's underlay address, the VXLAN source (e.g. `172.31.0.11`). */
  localUnderlayIp: string;
  /** The underlay device in the host namespace; default `ul0`. */
  underlayDevice?: string;
  /** Overlay MTU; default (and maximum) the underlay device's MTU minus 50. */
  mtu?: number;
}

/** The devices that carry a network on a host. */
export interface NetworkDevices {
  bridge: string;
  vxlan: string;
  vni: number;
  mtu: number;
}

/**
 * Makes the network present on the host: a bridge and a VXLAN device enslaved to it, both up,
 * neither with an address (a host must not be reachable from a tenant network). Idempotent; an
 * existing VXLAN device with another VNI, port, local address or underlay device is replaced.
 * The VXLAN device keeps source learning on: with head-end replication a frame from a new MAC
 * arrives flooded first, so each host learns which VTEP a MAC sits behind, and a migrated VM's
 * RARP announcement moves it (see HOST-FACTS). On failure every step this call made is undone.
 */
export async function ensureNetworkOnHost(options: EnsureNetworkOptions): Promise<NetworkDevices> {
  const { hostNs, networkKey, vni, localUnderlayIp } = options;
  if (!Number.isInteger(vni) || vni < 1 || vni > 0xffffff) {
    throw new NubisError('NET_INVALID_VNI', `VNI ${vni} is out of range: use an integer from 1 to 16777215`, { details: { vni } });
  }
  assertIpv4(localUnderlayIp, 'local underlay address');
  const underlayDevice = options.underlayDevice ?? DEFAULT_UNDERLAY_DEVICE;
  const inHost: CommandOptions = { netns: hostNs, signal: options.signal, timeoutMs: options.timeoutMs };
  const underlay = await findLink(underlayDevice, inHost);
  if (!underlay) {
    throw new NubisError('NET_LINK_NOT_FOUND', `Underlay device ${underlayDevice} does not exist in namespace ${hostNs}`, {
      details: { hostNs, underlayDevice },
    });
  }
  const maxMtu = underlay.mtu - VXLAN_OVERHEAD_BYTES;
  const mtu = options.mtu ?? maxMtu;
  if (!Number.isInteger(mtu) || mtu < 576 || mtu > maxMtu) {
    throw new NubisError(
      'NET_INVALID_MTU',
      `Overlay MTU ${mtu} does not fit: use 576 to ${maxMtu} (underlay MTU ${underlay.mtu} minus ${VXLAN_OVERHEAD_BYTES})`,
      {
        details: { mtu, maxMtu },
      },
    );
  }
  const bridgeName = bridgeNameFor(networkKey);
  const vxlanName = vxlanNameFor(networkKey);
  return Revert.run(async (revert) => {
    const existingBridge = await findLink(bridgeName, inHost);
    if (existingBridge && existingBridge.linkinfo?.info_kind !== 'bridge') {
      throw new NubisError('NET_LINK_CONFLICT', `Link ${bridgeName} in ${hostNs} exists but is not a bridge`, { details: { hostNs, name: bridgeName } });
    }
    if (!existingBridge) {
      await ip(['link', 'add', 'name', bridgeName, 'mtu', String(mtu), 'type', 'bridge'], inHost);
      revert.add(`delete bridge ${bridgeName}`, () => ip(['link', 'delete', bridgeName], inHost));
      // Before it is up, so no IPv6 link-local address ever appears on the tenant segment.
      await ip(['link', 'set', bridgeName, 'addrgenmode', 'none'], inHost);
    }
    const existingVxlan = await findLink(vxlanName, inHost);
    const data = existingVxlan?.linkinfo?.info_data ?? {};
    const matches =
      existingVxlan?.linkinfo?.info_kind === 'vxlan' &&
      data.id === vni &&
      data.port === VXLAN_PORT &&
      data.local === localUnderlayIp &&
      data.link === underlayDevice;
    if (existingVxlan && !matches) await ip(['link', 'delete', vxlanName], inHost);
    if (!matches) {
      await ip(
        [
          'link',
          'add',
          vxlanName,
          'mtu',
          String(mtu),
          'type',
          'vxlan',
          'id',
          String(vni),
          'dstport',
          String(VXLAN_PORT),
          'local',
          localUnderlayIp,
          'dev',
          underlayDevice,
        ],
        inHost,
      );
      revert.add(`delete vxlan ${vxlanName}`, () => ip(['link', 'delete', vxlanName], inHost));
      await ip(['link', 'set', vxlanName, 'addrgenmode', 'none'], inHost);
    }
    await ip(['link', 'set', vxlanName, 'mtu', String(mtu), 'master', bridgeName, 'up'], inHost);
    await ip(['link', 'set', bridgeName, 'mtu', String(mtu), 'up'], inHost);
    return { bridge: bridgeName, vxlan: vxlanName, vni, mtu };
  });
}

/** The change {@link setPeers} made. */
export interface PeerChange {
  added: string[];
  removed: string[];
}

/**
 * Keeps the head-end replication list of the network on this host exactly equal to
 * `peerUnderlayIps` (the underlay addresses of the other hosts that carry the network): missing
 * all-zero-MAC FDB entries are appended, stale ones deleted, and MACs learned behind a removed
 * peer are forgotten so no unicast keeps going there. The host's own address is ignored.
 */
export async function setPeers(options: NetworkOnHostKey & { peerUnderlayIps: readonly string[] }): Promise<PeerChange> {
  const inHost: CommandOptions = { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs };
  const vxlanName = vxlanNameFor(options.networkKey);
  for (const peer of options.peerUnderlayIps) assertIpv4(peer, 'peer underlay address');
  const vxlan = await findLink(vxlanName, inHost);
  if (!vxlan) {
    throw new NubisError('NET_NETWORK_NOT_FOUND', `Network ${options.networkKey} is not set up in ${options.hostNs}: no device ${vxlanName}`, {
      details: { hostNs: options.hostNs, networkKey: options.networkKey },
    });
  }
  const local = vxlan.linkinfo?.info_data?.local;
  const desired = options.peerUnderlayIps.filter((peer) => peer !== local);
  const entries = await readVxlanFdb(vxlanName, inHost);
  const current = entries.filter((entry) => entry.mac === FLOOD_MAC && entry.dst !== undefined).map((entry) => entry.dst!);
  const change = diffFloodEntries(current, desired);
  for (const peer of change.add) {
    await bridge(['fdb', 'append', FLOOD_MAC, 'dev', vxlanName, 'dst', peer], inHost);
  }
  for (const peer of change.remove) {
    await bridge(['fdb', 'delete', FLOOD_MAC, 'dev', vxlanName, 'dst', peer], inHost);
  }
  const removed = new Set(change.remove);
  for (const entry of entries) {
    if (entry.mac !== FLOOD_MAC && entry.dst !== undefined && removed.has(entry.dst)) {
      // Learned entries may age out between listing and deleting; that is the wanted outcome.
      await bridge(['fdb', 'delete', entry.mac, 'dev', vxlanName, 'dst', entry.dst], { ...inHost, allowFailure: true });
    }
  }
  return { added: change.add, removed: change.remove };
}

/**
 * The entries to append and delete so that the flood list `current` becomes `desired`
 * (duplicates ignored, order kept as given). Pure.
 */
export function diffFloodEntries(current: readonly string[], desired: readonly string[]): { add: string[]; remove: string[] } {
  const have = new Set(current);
  const want = new Set(desired);
  return {
    add: [...want].filter((peer) => !have.has(peer)),
    remove: [...have].filter((peer) => !want.has(peer)),
  };
}

/** The current head-end replication list (peer underlay addresses) of a network on a host. */
export async function getPeers(options: NetworkOnHostKey): Promise<string[]> {
  const inHost: CommandOptions = { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs };
  const entries = await readVxlanFdb(vxlanNameFor(options.networkKey), inHost);
  return entries
    .filter((entry) => entry.mac === FLOOD_MAC && entry.dst !== undefined)
    .map((entry) => entry.dst!)
    .sort();
}

interface FdbEntry {
  mac: string;
  dst?: string;
  state?: string;
}

async function readVxlanFdb(vxlanName: string, inHost: CommandOptions): Promise<FdbEntry[]> {
  return bridgeJson<FdbEntry[]>(['fdb', 'show', 'dev', vxlanName], inHost);
}

/**
 * Takes the network off the host: deletes its VXLAN device and bridge. Ports still plugged in
 * (taps, DHCP, probes) are unplugged but not deleted. Missing is not an error. Resolves with the
 * names of the devices that were deleted.
 */
export async function removeNetworkFromHost(options: NetworkOnHostKey): Promise<string[]> {
  const inHost: CommandOptions = { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs };
  const removed: string[] = [];
  for (const name of [vxlanNameFor(options.networkKey), bridgeNameFor(options.networkKey)]) {
    if (await deleteLinkIfPresent(name, inHost)) removed.push(name);
  }
  return removed;
}

/** What {@link inspectNetworkOnHost} found. */
export interface NetworkOnHostState extends NetworkDevices {
  localUnderlayIp: string;
  peers: string[];
  /** Names of the links plugged into the bridge other than the VXLAN device. */
  ports: string[];
}

/**
 * Reads back what exists for the network on the host (for an agent re-adopting after a restart),
 * or undefined when the bridge or VXLAN device is missing.
 */
export async function inspectNetworkOnHost(options: NetworkOnHostKey): Promise<NetworkOnHostState | undefined> {
  const inHost: CommandOptions = { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs };
  const bridgeName = bridgeNameFor(options.networkKey);
  const vxlanName = vxlanNameFor(options.networkKey);
  const links = await listLinks(inHost);
  const bridgeLink = links.find((link) => link.ifname === bridgeName);
  const vxlan = links.find((link) => link.ifname === vxlanName);
  if (!bridgeLink || !vxlan) return undefined;
  return {
    bridge: bridgeName,
    vxlan: vxlanName,
    vni: Number(vxlan.linkinfo?.info_data?.id),
    mtu: bridgeLink.mtu,
    localUnderlayIp: String(vxlan.linkinfo?.info_data?.local ?? ''),
    peers: await getPeers(options),
    ports: links
      .filter((link) => link.master === bridgeName && link.ifname !== vxlanName)
      .map((link) => link.ifname)
      .sort(),
  };
}

/** What {@link createTap} needs. */
export interface CreateTapOptions extends NetworkOnHostKey {
  /** The tap's name (at most 15 characters; see `tapNameFor`). */
  tapName: string;
  /** Tap MTU; default the network bridge's MTU. */
  mtu?: number;
}

/** A tap plugged into a network. */
export interface TapDevice {
  tapName: string;
  bridge: string;
  mtu: number;
}

/**
 * Makes a persistent tap device in the host namespace and plugs it into the network's bridge, so
 * a QEMU started in the same namespace opens it with `-netdev tap,ifname=TAP,script=no,
 * downscript=no`. It is created single-queue (QEMU's TUNSETIFF must match IFF_MULTI_QUEUE of a
 * persistent tap; vnet_hdr is negotiated on open). Idempotent; on failure nothing is left.
 */
export async function createTap(options: CreateTapOptions): Promise<TapDevice> {
  const { tapName } = options;
  assertInterfaceName(tapName);
  const inHost: CommandOptions = { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs };
  const bridgeName = bridgeNameFor(options.networkKey);
  const bridgeLink = await requireBridge(bridgeName, options);
  const mtu = options.mtu ?? bridgeLink.mtu;
  return Revert.run(async (revert) => {
    const existing = await findLink(tapName, inHost);
    if (existing && !(existing.linkinfo?.info_kind === 'tun' && existing.linkinfo.info_data?.type === 'tap')) {
      throw new NubisError('NET_LINK_CONFLICT', `Link ${tapName} in ${options.hostNs} exists but is not a tap device`, {
        details: { hostNs: options.hostNs, name: tapName },
      });
    }
    if (!existing) {
      await ip(['tuntap', 'add', 'dev', tapName, 'mode', 'tap'], inHost);
      revert.add(`delete tap ${tapName}`, () => ip(['link', 'delete', tapName], inHost));
      await ip(['link', 'set', tapName, 'addrgenmode', 'none'], inHost);
    }
    await ip(['link', 'set', tapName, 'mtu', String(mtu), 'master', bridgeName, 'up'], inHost);
    return { tapName, bridge: bridgeName, mtu };
  });
}

/** Deletes a tap device from the host namespace; missing is not an error. Resolves true when it existed. */
export async function deleteTap(options: { hostNs: string; tapName: string } & CallOptions): Promise<boolean> {
  assertInterfaceName(options.tapName);
  return deleteLinkIfPresent(options.tapName, { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs });
}

/** What {@link plugNamespace} needs. */
export interface PlugNamespaceOptions extends NetworkOnHostKey {
  /** The veth end on the network's bridge, in the host namespace. */
  hostLinkName: string;
  /** The namespace that gets the other end (it must exist). */
  peerNs: string;
  /** The name of the other end inside `peerNs`. */
  peerName: string;
  /** MAC of the end inside `peerNs`; default a random one. */
  mac?: string;
  /** Default the bridge's MTU. */
  mtu?: number;
}

/**
 * Connects another namespace (a DHCP server, a probe) to the network on a host with a veth pair:
 * one end on the network's bridge in the host namespace, the other, up, inside `peerNs`. On
 * failure the pair is removed. Resolves with the MTU used.
 */
export async function plugNamespace(options: PlugNamespaceOptions): Promise<{ mtu: number }> {
  assertInterfaceName(options.hostLinkName);
  assertInterfaceName(options.peerName);
  const inHost: CommandOptions = { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs };
  const inPeer: CommandOptions = { ...inHost, netns: options.peerNs };
  const bridgeName = bridgeNameFor(options.networkKey);
  const bridgeLink = await requireBridge(bridgeName, options);
  const mtu = options.mtu ?? bridgeLink.mtu;
  return Revert.run(async (revert) => {
    const peerAddress = options.mac === undefined ? [] : ['address', normalizeMac(options.mac)];
    await ip(
      [
        'link',
        'add',
        options.hostLinkName,
        'mtu',
        String(mtu),
        'type',
        'veth',
        'peer',
        'name',
        options.peerName,
        'mtu',
        String(mtu),
        ...peerAddress,
        'netns',
        options.peerNs,
      ],
      inHost,
    );
    revert.add(`delete veth ${options.hostLinkName}`, () => deleteLinkIfPresent(options.hostLinkName, inHost));
    await ip(['link', 'set', options.hostLinkName, 'addrgenmode', 'none'], inHost);
    await ip(['link', 'set', options.hostLinkName, 'master', bridgeName, 'up'], inHost);
    await ip(['link', 'set', options.peerName, 'up'], inPeer);
    return { mtu };
  });
}

async function requireBridge(bridgeName: string, options: NetworkOnHostKey) {
  const link = await findLink(bridgeName, { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs });
  if (link?.linkinfo?.info_kind !== 'bridge') {
    throw new NubisError('NET_NETWORK_NOT_FOUND', `Network ${options.networkKey} is not set up in ${options.hostNs}: no bridge ${bridgeName}`, {
      details: { hostNs: options.hostNs, networkKey: options.networkKey },
    });
  }
  return link;
}
