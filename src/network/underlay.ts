// The "physical" L2 segment of a multi-host setup on one machine: a bridge in the root namespace
// plays the switch, and each host namespace gets a veth "cable" to it with its underlay address,
// exactly as separate servers on one L2 segment. Also the crash-proof cleanup by name prefix.
import { NubisError } from '../core/errors.ts';
import { parseIpv4Cidr } from './addresses.ts';
import { findLink, ip, listLinks, runCommand, setExactAddress, type LinkInfo } from './ip-command.ts';
import { assertInterfaceName, shortName } from './names.ts';
import { createNamespace, deleteNamespace, killNamespaceProcesses, listNamespaces, namespaceExists } from './namespaces.ts';
import { Revert } from '../core/revert.ts';

/** The default name of the underlay device inside a host namespace. */
export const DEFAULT_UNDERLAY_DEVICE = 'ul0';

/** Common options: cancellation and a per-command deadline. */
export interface CallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/**
 * Makes sure the Linux bridge `name` exists in the root namespace and is up, without any IP
 * address (IPv6 address generation is off too: a switch has no address). Idempotent. Resolves
 * true when it was created.
 */
export async function ensureUnderlayBridge(name: string, options: CallOptions = {}): Promise<boolean> {
  assertInterfaceName(name);
  const existing = await findLink(name, options);
  if (existing && existing.linkinfo?.info_kind !== 'bridge') {
    throw new NubisError('NET_LINK_CONFLICT', `Link ${name} exists but is a ${existing.linkinfo?.info_kind ?? 'plain'} device, not a bridge`, {
      details: { name },
    });
  }
  return Revert.run(async (revert) => {
    if (!existing) {
      await ip(['link', 'add', 'name', name, 'type', 'bridge'], options);
      revert.add(`delete bridge ${name}`, () => ip(['link', 'delete', name], options));
    }
    await ip(['link', 'set', name, 'addrgenmode', 'none'], options);
    await setExactAddress(name, undefined, options);
    await ip(['link', 'set', name, 'up'], options);
    return !existing;
  });
}

/** What {@link attachHostToUnderlay} needs. */
export interface AttachHostOptions extends CallOptions {
  /** The underlay bridge in the root namespace (see {@link ensureUnderlayBridge}). */
  bridge: string;
  /** The host namespace; created when missing. */
  hostNs: string;
  /** The host's underlay address with prefix length, e.g. `172.31.0.11/24`. */
  address: string;
  /** MTU of the cable, both ends; default 1500. Overlays on this host get 50 bytes less. */
  mtu?: number;
  /** The device name inside the host namespace; default `ul0`. */
  device?: string;
  /**
   * The cable's end on the bridge in the root namespace; default
   * `shortName(bridge, hostNs)`, which starts with the bridge's name (so a name prefix shared
   * by the bridge also finds these in {@link cleanupByPrefix}).
   */
  rootLinkName?: string;
}

/** The devices of one host's underlay attachment. */
export interface UnderlayAttachment {
  /** The device inside the host namespace (e.g. `ul0`). */
  device: string;
  /** The veth end plugged into the bridge in the root namespace. */
  rootLink: string;
  /** The address on `device`, e.g. `172.31.0.11/24`. */
  address: string;
  mtu: number;
}

/**
 * Cables the host namespace to the underlay bridge: a veth pair with one end in the host
 * namespace (named `ul0` unless told otherwise; up, with exactly `address`) and the other on
 * the bridge. Idempotent: an existing attachment is kept and corrected (address, MTU, master,
 * up). On failure every step this call made is undone.
 */
export async function attachHostToUnderlay(options: AttachHostOptions): Promise<UnderlayAttachment> {
  const { bridge, hostNs, address } = options;
  const device = options.device ?? DEFAULT_UNDERLAY_DEVICE;
  const rootLink = options.rootLinkName ?? underlayRootLinkName(bridge, hostNs);
  const mtu = options.mtu ?? 1500;
  assertInterfaceName(device);
  assertInterfaceName(rootLink);
  parseIpv4Cidr(address, 'underlay address');
  const call: CallOptions = { signal: options.signal, timeoutMs: options.timeoutMs };
  const inHost = { ...call, netns: hostNs };
  return Revert.run(async (revert) => {
    if (await createNamespace(hostNs, call)) {
      revert.add(`delete namespace ${hostNs}`, () => deleteNamespace(hostNs, call));
    }
    const bridgeLink = await findLink(bridge, call);
    if (!bridgeLink) {
      throw new NubisError('NET_LINK_NOT_FOUND', `Underlay bridge ${bridge} does not exist; ensure it first`, { details: { bridge } });
    }
    const rootEnd = await findLink(rootLink, call);
    const hostEnd = await findLink(device, inHost);
    if (rootEnd === undefined || hostEnd === undefined) {
      // A half-present pair (e.g. after a crash) is remade rather than guessed at.
      if (rootEnd) await ip(['link', 'delete', rootLink], call);
      if (hostEnd) await ip(['link', 'delete', device], inHost);
      await ip(['link', 'add', rootLink, 'mtu', String(mtu), 'type', 'veth', 'peer', 'name', device, 'mtu', String(mtu), 'netns', hostNs], call);
      revert.add(`delete veth ${rootLink}`, () => ip(['link', 'delete', rootLink], call));
    } else if (rootEnd.linkinfo?.info_kind !== 'veth' || hostEnd.linkinfo?.info_kind !== 'veth') {
      throw new NubisError('NET_LINK_CONFLICT', `Links ${rootLink} or ${device} in ${hostNs} exist but are not a veth pair`, {
        details: { rootLink, device, hostNs },
      });
    }
    await ip(['link', 'set', rootLink, 'addrgenmode', 'none'], call);
    await ip(['link', 'set', rootLink, 'mtu', String(mtu), 'master', bridge, 'up'], call);
    await ip(['link', 'set', device, 'mtu', String(mtu), 'up'], inHost);
    await setExactAddress(device, address, inHost);
    return { device, rootLink, address, mtu };
  });
}

/** The default root-namespace end of a host's underlay cable (see {@link AttachHostOptions}). */
export function underlayRootLinkName(bridge: string, hostNs: string): string {
  return shortName(bridge, hostNs);
}

/** What {@link cleanupByPrefix} removed. */
export interface CleanupReport {
  namespaces: string[];
  links: string[];
  nftTables: string[];
  /** Processes that were still running in the removed namespaces (DHCP servers, probes, QEMU). */
  killedPids: number[];
}

/**
 * Removes everything whose name starts with `prefix`: the processes in matching namespaces, the
 * namespaces (with every link inside them), root-namespace links and bridges, and root-namespace
 * nftables tables. For `nubis down` and after a crash; safe to run when nothing is there. The
 * prefix must be at least 3 characters, so a typo cannot sweep away unrelated devices.
 */
export async function cleanupByPrefix(prefix: string, options: CallOptions = {}): Promise<CleanupReport> {
  if (prefix.length < 3 || /[\s/]/.test(prefix)) {
    throw new NubisError('NET_INVALID_NAME', `Cleanup prefix ${JSON.stringify(prefix)} is too broad: use at least 3 characters without spaces`, {
      details: { prefix },
    });
  }
  const report: CleanupReport = { namespaces: [], links: [], nftTables: [], killedPids: [] };
  for (const ns of await listNamespaces(prefix, options)) {
    report.killedPids.push(...(await killNamespaceProcesses(ns, options)));
    await deleteNamespace(ns, options);
    report.namespaces.push(ns);
  }
  // Ports before bridges, so a bridge never outlives the check of its ports.
  const links = (await listLinks(options)).filter((link) => link.ifname.startsWith(prefix));
  const order = (link: LinkInfo) => (link.linkinfo?.info_kind === 'bridge' ? 1 : 0);
  for (const link of links.sort((a, b) => order(a) - order(b))) {
    if (await deleteLinkIfPresent(link.ifname, options)) report.links.push(link.ifname);
  }
  for (const table of await listNftTables(options)) {
    if (table.name.startsWith(prefix)) {
      await runCommand('nft', ['delete', 'table', table.family, table.name], options);
      report.nftTables.push(`${table.family} ${table.name}`);
    }
  }
  return report;
}

/** The nftables tables of a namespace (`nft -j list tables`); empty when nft is not installed. */
export async function listNftTables(options: CallOptions & { netns?: string } = {}): Promise<{ family: string; name: string }[]> {
  let out: string;
  try {
    out = (await runCommand('nft', ['-j', 'list', 'tables'], options)).stdout;
  } catch (error) {
    // Without the nft tool nobody can have made a table with it.
    if (/ENOENT/.test(String((error as Error).message))) return [];
    throw error;
  }
  if (out.trim() === '') return [];
  const parsed = JSON.parse(out) as { nftables?: { table?: { family: string; name: string } }[] };
  return (parsed.nftables ?? []).flatMap((entry) => (entry.table ? [{ family: entry.table.family, name: entry.table.name }] : []));
}

/** Deletes a link when present; resolves true when it was. */
export async function deleteLinkIfPresent(name: string, options: CallOptions & { netns?: string } = {}): Promise<boolean> {
  // A link in a namespace that is gone is gone too.
  if (options.netns !== undefined && !(await namespaceExists(options.netns, { signal: options.signal, timeoutMs: options.timeoutMs }))) return false;
  if (!(await findLink(name, options))) return false;
  try {
    await ip(['link', 'delete', name], options);
  } catch (error) {
    // Deleting one end of a veth removes the other: a race with ourselves is not a failure.
    if (await findLink(name, options)) throw error;
  }
  return true;
}
