// The optional NAT gateway of a tenant network on a host, and its port forwards, modelled on an
// OpenStack router namespace. For a network on a host there is a router namespace
// `<hostNs>-gw-<8 hex of the network key>` (host prefixes cover it in cleanupByPrefix) with:
// - an inner leg `gw-in` plugged into the network's bridge, carrying the network's gateway
//   address (e.g. 10.0.0.1/24) and a MAC derived from the network key, so a VM's ARP entry stays
//   right when the gateway is rebuilt;
// - an outer leg `gw-out`, a veth into the host namespace itself on a /30 "link subnet" from
//   169.254.0.0/16 (host end .1, router .2), the router's default route via the host end.
// Outbound: the router masquerades the tenant subnet out of `gw-out`; the host masquerades the
// router's address out of its uplink (`ul0`). Two NAT steps, because subnets of different
// networks may overlap: the host never routes a tenant subnet, it only ever sees router
// addresses, which are unique per host.
// Inbound (port forwards) is two DNAT steps for the same reason: the host maps
// `listenAddress:hostPort` to the router's outer address with the same port, and the router
// maps that port to `vmIp:vmPort`. The VM sees the client's real address (no SNAT inbound), so
// security groups can judge it; replies go back through both conntrack entries. The router's
// forward chain lets nothing in from outside that is not a reply or a forwarded port, so a
// neighbour that routes a tenant subnet towards the host still reaches no VM.
// State lives in nftables itself, so an agent restart re-reads it: in each host namespace one
// table `ip nubis_gateway` with a map `forwards` (protocol . hostPort -> router . hostPort, whose
// key uniqueness makes the kernel refuse a host port forwarded twice), a set `listeners`
// (listenAddress . protocol . hostPort) and a set `masquerade_sources` (router . uplink); in each
// router a table `ip nubis_router` with a map `forwards` (protocol . hostPort -> vmIp . vmPort).
// Every change of a table is one `nft -f` transaction. A replacement of a network's forwards
// first widens the router's map to old plus new, then swaps the host's entries, then narrows the
// router's map, so every host entry always has its router entry: never half-applied.
// Not supported: a VM reaching its own network's forward through the host address (hairpin NAT).
import { createHash } from 'node:crypto';
import { NubisError } from '../core/errors.ts';
import { cidrContains, ipv4ToNumber, numberToIpv4, parseIpv4Cidr } from './addresses.ts';
import { findLink, ip, ipJson, listLinks, runCommand, setExactAddress, setSysctl, type CommandOptions } from './ip-command.ts';
import { bridgeNameFor, shortName } from './names.ts';
import { createNamespace, deleteNamespace, namespaceExists } from './namespaces.ts';
import { plugNamespace } from './overlay.ts';
import { Revert } from '../core/revert.ts';
import { DEFAULT_UNDERLAY_DEVICE, deleteLinkIfPresent, type CallOptions } from './underlay.ts';

/** The router's leg on the network's bridge, inside the router namespace. */
export const ROUTER_INNER_INTERFACE = 'gw-in';

/** The router's leg towards the host namespace, inside the router namespace. */
export const ROUTER_OUTER_INTERFACE = 'gw-out';

/** The nftables table (ip family) in each host namespace that has gateways. */
export const HOST_GATEWAY_TABLE = 'nubis_gateway';

/** The nftables table (ip family) in each router namespace. */
export const ROUTER_TABLE = 'nubis_router';

/** Link subnets come from here (RFC 3927 link-local: never routed beyond a host). */
const LINK_POOL_NETWORK = ipv4ToNumber('169.254.0.0')!;
const LINK_POOL_BLOCKS = 2 ** 14;
/** 169.254.169.0/24 is left alone: clouds put their metadata service at 169.254.169.254. */
const RESERVED_BLOCKS = { first: 169 * 64, last: 169 * 64 + 63 };

/** Where a network's gateway lives. */
export interface GatewayKey extends CallOptions {
  /** The host namespace. */
  hostNs: string;
  /** The network's stable identity, as for the overlay (the bridge name is derived from it). */
  networkKey: string;
}

/** What {@link ensureGateway} needs. */
export interface GatewayOptions extends GatewayKey {
  /** The gateway's address in the tenant network with prefix length, e.g. `10.0.0.1/24`. */
  gatewayCidr: string;
  /** The tenant subnet, e.g. `10.0.0.0/24`; only it is masqueraded. */
  subnet: string;
  /** The host's device towards the outside, where router traffic is masqueraded; default `ul0`. */
  uplinkDevice?: string;
  /**
   * The /30 between router and host, e.g. `169.254.7.0/30` (host .1, router .2); default a free
   * one of 169.254.0.0/16 chosen from the network key. An existing gateway keeps its own.
   */
  linkSubnet?: string;
}

/** A network's gateway on a host. */
export interface Gateway {
  routerNs: string;
  /** The inner leg's end on the network's bridge, in the host namespace. */
  innerHostLink: string;
  /** The outer leg's end in the host namespace. */
  outerHostLink: string;
  /** The gateway address VMs route through, e.g. `10.0.0.1`. */
  gatewayIp: string;
  subnet: string;
  /** The /30 between router and host, e.g. `169.254.7.0/30`. */
  linkSubnet: string;
  /** The host end's address on the link subnet, the router's default route. */
  hostLinkIp: string;
  /** The router's address on the link subnet: what the host masquerades and forwards to. */
  routerOuterIp: string;
  uplinkDevice: string;
}

/** One port forward: `listenAddress:hostPort` on the host reaches `vmIp:vmPort`. */
export interface PortForward {
  protocol: 'tcp' | 'udp';
  hostPort: number;
  vmIp: string;
  vmPort: number;
  /** The host address clients connect to (e.g. its underlay address); see {@link SetPortForwardsOptions}. */
  listenAddress?: string;
}

/** A forward as it is in force: with its listen address. */
export type ActivePortForward = PortForward & { listenAddress: string };

/** What {@link setPortForwards} needs. */
export interface SetPortForwardsOptions extends GatewayKey {
  /** The complete set of forwards of this network on this host; `[]` removes them all. */
  forwards: readonly PortForward[];
  /** The listen address of every forward that does not name its own. */
  listenAddress?: string;
}

/** The router namespace of a network on a host: `<hostNs>-gw-<8 hex>`, so host prefixes cover it. */
export function routerNamespaceFor(hostNs: string, networkKey: string): string {
  return `${hostNs}-gw-${createHash('sha256').update(networkKey).digest('hex').slice(0, 8)}`;
}

/** The host-namespace ends of a gateway's two legs. */
export function gatewayLinkNamesFor(networkKey: string): { innerHostLink: string; outerHostLink: string } {
  return { innerHostLink: shortName('ngi-', networkKey), outerHostLink: shortName('ngo-', networkKey) };
}

/** The stable MAC of a network's gateway: locally administered, unicast, from the network key. */
export function gatewayMacFor(networkKey: string): string {
  const hash = createHash('sha256').update(`gateway:${networkKey}`).digest('hex');
  return ['02', ...hash.slice(0, 10).match(/../g)!].join(':');
}

/**
 * The link subnet for a network's gateway: the /30 of 169.254.0.0/16 the network key hashes to,
 * or the next one not in `takenSubnets` (nor in 169.254.169.0/24). Pure.
 */
export function pickLinkSubnet(networkKey: string, takenSubnets: readonly string[]): string {
  const taken = new Set(takenSubnets.map((subnet) => parseIpv4Cidr(subnet, 'link subnet').network));
  const start = Number.parseInt(createHash('sha256').update(networkKey).digest('hex').slice(0, 8), 16) % LINK_POOL_BLOCKS;
  for (let step = 0; step < LINK_POOL_BLOCKS; step++) {
    const block = (start + step) % LINK_POOL_BLOCKS;
    if (block >= RESERVED_BLOCKS.first && block <= RESERVED_BLOCKS.last) continue;
    const network = numberToIpv4(LINK_POOL_NETWORK + block * 4);
    if (!taken.has(network)) return `${network}/30`;
  }
  throw new NubisError('NET_GATEWAY_LINK_EXHAUSTED', 'Every /30 of 169.254.0.0/16 is in use on this host', { details: { networkKey } });
}

/** The host (.1) and router (.2) addresses of a /30 link subnet; throws unless it is a /30. */
export function linkAddresses(linkSubnet: string): { linkSubnet: string; hostLinkIp: string; routerOuterIp: string } {
  const parsed = parseIpv4Cidr(linkSubnet, 'link subnet');
  if (parsed.prefixLength !== 30) {
    throw new NubisError('NET_INVALID_ADDRESS', `Link subnet ${linkSubnet} is not a /30 such as 169.254.7.0/30`, { details: { linkSubnet } });
  }
  const base = ipv4ToNumber(parsed.network)!;
  return { linkSubnet: `${parsed.network}/30`, hostLinkIp: numberToIpv4(base + 1), routerOuterIp: numberToIpv4(base + 2) };
}

/**
 * Checks a forward set against the network's subnet and fills in listen addresses: ports
 * 1-65535, tcp or udp, the VM inside the subnet, each protocol and host port at most once.
 * Throws `NET_INVALID_PORT_FORWARD`. Pure.
 */
export function normalizePortForwards(forwards: readonly PortForward[], subnet: string, listenAddress?: string): ActivePortForward[] {
  const seen = new Set<string>();
  return forwards.map((forward) => {
    const bad = (why: string) =>
      new NubisError('NET_INVALID_PORT_FORWARD', `Port forward ${forward.protocol} ${forward.hostPort} -> ${forward.vmIp}:${forward.vmPort} ${why}`, {
        details: { forward },
      });
    if (forward.protocol !== 'tcp' && forward.protocol !== 'udp') throw bad('has a protocol other than tcp or udp');
    if (!isPort(forward.hostPort) || !isPort(forward.vmPort)) throw bad('has a port outside 1-65535');
    if (ipv4ToNumber(forward.vmIp) === undefined || !cidrContains(subnet, forward.vmIp)) throw bad(`points outside subnet ${subnet}`);
    const listen = forward.listenAddress ?? listenAddress;
    if (listen === undefined || ipv4ToNumber(listen) === undefined) throw bad('has no IPv4 listen address');
    const key = `${forward.protocol} ${forward.hostPort}`;
    if (seen.has(key)) throw bad('repeats a host port of the same set');
    seen.add(key);
    return { protocol: forward.protocol, hostPort: forward.hostPort, vmIp: forward.vmIp, vmPort: forward.vmPort, listenAddress: listen };
  });
}

/** The nft script that gives a host namespace's gateway table its shape (sets and maps kept). Pure. */
export function renderHostTable(): string {
  const table = `ip ${HOST_GATEWAY_TABLE}`;
  const dnat = 'ip daddr . meta l4proto . th dport @listeners dnat ip to meta l4proto . th dport map @forwards';
  return [
    `add table ${table}`,
    `add map ${table} forwards { type inet_proto . inet_service : ipv4_addr . inet_service; }`,
    `add set ${table} listeners { type ipv4_addr . inet_proto . inet_service; }`,
    `add set ${table} masquerade_sources { type ipv4_addr . ifname; }`,
    `add chain ${table} prerouting { type nat hook prerouting priority dstnat; policy accept; }`,
    `flush chain ${table} prerouting`,
    `add rule ${table} prerouting ${dnat}`,
    // The host's own clients (agents, a CLI on the host) reach forwards too.
    `add chain ${table} output { type nat hook output priority -100; policy accept; }`,
    `flush chain ${table} output`,
    `add rule ${table} output ${dnat}`,
    `add chain ${table} postrouting { type nat hook postrouting priority srcnat; policy accept; }`,
    `flush chain ${table} postrouting`,
    `add rule ${table} postrouting ip saddr . oifname @masquerade_sources masquerade`,
    '',
  ].join('\n');
}

/** The nft script that gives a router namespace its table (the forwards map kept). Pure. */
export function renderRouterTable(subnet: string): string {
  const parsed = parseIpv4Cidr(subnet, 'subnet');
  const table = `ip ${ROUTER_TABLE}`;
  const outer = JSON.stringify(ROUTER_OUTER_INTERFACE);
  return [
    `add table ${table}`,
    `add map ${table} forwards { type inet_proto . inet_service : ipv4_addr . inet_service; }`,
    `add chain ${table} prerouting { type nat hook prerouting priority dstnat; policy accept; }`,
    `flush chain ${table} prerouting`,
    `add rule ${table} prerouting iifname ${outer} dnat ip to meta l4proto . th dport map @forwards`,
    `add chain ${table} postrouting { type nat hook postrouting priority srcnat; policy accept; }`,
    `flush chain ${table} postrouting`,
    `add rule ${table} postrouting oifname ${outer} ip saddr ${parsed.network}/${parsed.prefixLength} masquerade`,
    // From outside only replies and forwarded ports reach the network.
    `add chain ${table} forward { type filter hook forward priority filter; policy accept; }`,
    `flush chain ${table} forward`,
    `add rule ${table} forward iifname ${outer} ct state established,related accept`,
    `add rule ${table} forward iifname ${outer} ct status dnat accept`,
    `add rule ${table} forward iifname ${outer} drop`,
    '',
  ].join('\n');
}

/**
 * Makes sure the network has its NAT gateway on the host: router namespace, inner leg on the
 * bridge with the gateway address, outer leg to the host with the default route, forwarding and
 * masquerading in both namespaces. Idempotent (existing forwards are kept); on failure every step
 * this call made is undone. Throws `NET_NETWORK_NOT_FOUND` when the network is not on the host and
 * `NET_LINK_NOT_FOUND` when the uplink device is missing.
 */
export async function ensureGateway(options: GatewayOptions): Promise<Gateway> {
  const gateway = parseIpv4Cidr(options.gatewayCidr, 'gateway address');
  const subnet = parseIpv4Cidr(options.subnet, 'subnet');
  if (gateway.network !== subnet.network || gateway.prefixLength !== subnet.prefixLength || gateway.address === subnet.network) {
    throw new NubisError('NET_INVALID_ADDRESS', `Gateway address ${options.gatewayCidr} is not a host address of subnet ${options.subnet}`, {
      details: { gatewayCidr: options.gatewayCidr, subnet: options.subnet },
    });
  }
  const uplinkDevice = options.uplinkDevice ?? DEFAULT_UNDERLAY_DEVICE;
  const call: CallOptions = { signal: options.signal, timeoutMs: options.timeoutMs };
  const inHost: CommandOptions = { ...call, netns: options.hostNs };
  const routerNs = routerNamespaceFor(options.hostNs, options.networkKey);
  const inRouter: CommandOptions = { ...call, netns: routerNs };
  const { innerHostLink, outerHostLink } = gatewayLinkNamesFor(options.networkKey);
  const subnetText = `${subnet.network}/${subnet.prefixLength}`;

  return withHostLock(options.hostNs, () =>
    Revert.run(async (revert) => {
      if (!(await findLink(uplinkDevice, inHost))) {
        throw new NubisError('NET_LINK_NOT_FOUND', `Uplink device ${uplinkDevice} does not exist in namespace ${options.hostNs}`, {
          details: { hostNs: options.hostNs, uplinkDevice },
        });
      }
      if (await createNamespace(routerNs, call)) {
        revert.add(`delete namespace ${routerNs}`, () => deleteNamespace(routerNs, { ...call, killProcesses: true }));
        // The networks are IPv4; a router soliciting IPv6 would only add noise to the segment.
        await setSysctl('net.ipv6.conf.all.disable_ipv6', '1', inRouter);
        await setSysctl('net.ipv6.conf.default.disable_ipv6', '1', inRouter);
      }
      await setSysctl('net.ipv4.ip_forward', '1', inRouter);

      // Inner leg: the gateway address on the network's bridge.
      if (!(await findLink(innerHostLink, inHost)) || !(await findLink(ROUTER_INNER_INTERFACE, inRouter))) {
        await deleteLinkIfPresent(innerHostLink, inHost);
        await deleteLinkIfPresent(ROUTER_INNER_INTERFACE, inRouter);
        await plugNamespace({
          ...call,
          hostNs: options.hostNs,
          networkKey: options.networkKey,
          hostLinkName: innerHostLink,
          peerNs: routerNs,
          peerName: ROUTER_INNER_INTERFACE,
          mac: gatewayMacFor(options.networkKey),
        });
        revert.add(`delete veth ${innerHostLink}`, () => deleteLinkIfPresent(innerHostLink, inHost));
      } else {
        await ip(['link', 'set', innerHostLink, 'master', bridgeNameFor(options.networkKey), 'up'], inHost);
        await ip(['link', 'set', ROUTER_INNER_INTERFACE, 'up'], inRouter);
      }
      await setExactAddress(ROUTER_INNER_INTERFACE, `${gateway.address}/${gateway.prefixLength}`, inRouter);

      // Outer leg: a /30 to the host, the router's way out.
      const link = await chooseLinkSubnet(options, outerHostLink, inHost, inRouter);
      if (!link.present) {
        await deleteLinkIfPresent(outerHostLink, inHost);
        await deleteLinkIfPresent(ROUTER_OUTER_INTERFACE, inRouter);
        await ip(['link', 'add', outerHostLink, 'type', 'veth', 'peer', 'name', ROUTER_OUTER_INTERFACE, 'netns', routerNs], inHost);
        revert.add(`delete veth ${outerHostLink}`, () => deleteLinkIfPresent(outerHostLink, inHost));
        await ip(['link', 'set', outerHostLink, 'addrgenmode', 'none'], inHost);
      }
      const addresses = linkAddresses(link.linkSubnet);
      await setExactAddress(outerHostLink, `${addresses.hostLinkIp}/30`, inHost);
      await ip(['link', 'set', outerHostLink, 'up'], inHost);
      await setExactAddress(ROUTER_OUTER_INTERFACE, `${addresses.routerOuterIp}/30`, inRouter);
      await ip(['link', 'set', ROUTER_OUTER_INTERFACE, 'up'], inRouter);
      await ip(['route', 'replace', 'default', 'via', addresses.hostLinkIp, 'dev', ROUTER_OUTER_INTERFACE], inRouter);

      // NAT: the router hides the tenant subnet behind its outer address, the host hides that.
      await runCommand('nft', ['-f', '-'], { ...inRouter, input: renderRouterTable(subnetText) });
      await setSysctl('net.ipv4.ip_forward', '1', inHost);
      const sources = (await readHostTable(inHost))?.masqueradeSources ?? [];
      const stale = sources.filter((source) => source.address === addresses.routerOuterIp && source.device !== uplinkDevice);
      const mine = `${addresses.routerOuterIp} . ${JSON.stringify(uplinkDevice)}`;
      const hostScript = [
        renderHostTable(),
        ...stale.map((source) => `delete element ip ${HOST_GATEWAY_TABLE} masquerade_sources { ${source.address} . ${JSON.stringify(source.device)} }`),
        `add element ip ${HOST_GATEWAY_TABLE} masquerade_sources { ${mine} }`,
        '',
      ].join('\n');
      // The last step, and one transaction: if it fails it changed nothing, so it has no undo.
      await runCommand('nft', ['-f', '-'], { ...inHost, input: hostScript });
      return {
        routerNs,
        innerHostLink,
        outerHostLink,
        gatewayIp: gateway.address,
        subnet: subnetText,
        ...addresses,
        uplinkDevice,
      };
    }),
  );
}

/**
 * Takes the network's gateway off the host: its forwards and masquerading in the host table (the
 * table too when no gateway is left), the router namespace and both legs. Entries left in the
 * host table by gateways whose link is gone (a crash) are swept too. Missing is not an error;
 * resolves true when the router namespace existed.
 */
export async function removeGateway(options: GatewayKey): Promise<boolean> {
  const call: CallOptions = { signal: options.signal, timeoutMs: options.timeoutMs };
  const inHost: CommandOptions = { ...call, netns: options.hostNs };
  const routerNs = routerNamespaceFor(options.hostNs, options.networkKey);
  const { innerHostLink, outerHostLink } = gatewayLinkNamesFor(options.networkKey);
  return withHostLock(options.hostNs, async () => {
    // Without its host the router has nothing to unhook from.
    if (!(await namespaceExists(options.hostNs, call))) return deleteNamespace(routerNs, { ...call, killProcesses: true });
    const table = await readHostTable(inHost);
    if (table) {
      // Keep only what belongs to the host's other gateways, judged by their live links.
      const live = new Set((await liveRouterAddresses(inHost)).filter((entry) => entry.link !== outerHostLink).map((entry) => entry.routerOuterIp));
      const goneForwards = table.forwards.filter((entry) => !live.has(entry.routerIp));
      const goneKeys = new Set(goneForwards.map((entry) => `${entry.protocol} ${entry.hostPort}`));
      const goneListeners = table.listeners.filter((entry) => {
        const key = `${entry.protocol} ${entry.hostPort}`;
        const orphan = !table.forwards.some((forward) => forward.protocol === entry.protocol && forward.hostPort === entry.hostPort);
        return orphan || goneKeys.has(key);
      });
      const goneSources = table.masqueradeSources.filter((entry) => !live.has(entry.address));
      const name = `ip ${HOST_GATEWAY_TABLE}`;
      let script: string[];
      if (goneSources.length === table.masqueradeSources.length && goneForwards.length === table.forwards.length) {
        script = [`delete table ${name}`];
      } else {
        script = [
          ...goneForwards.map((entry) => `delete element ${name} forwards { ${entry.protocol} . ${entry.hostPort} }`),
          ...goneListeners.map((entry) => `delete element ${name} listeners { ${entry.address} . ${entry.protocol} . ${entry.hostPort} }`),
          ...goneSources.map((entry) => `delete element ${name} masquerade_sources { ${entry.address} . ${JSON.stringify(entry.device)} }`),
        ];
      }
      if (script.length > 0) await runCommand('nft', ['-f', '-'], { ...inHost, input: [...script, ''].join('\n') });
    }
    const existed = await deleteNamespace(routerNs, { ...call, killProcesses: true });
    // The router's ends went with its namespace, and a veth's peer with its end; this is for a
    // namespace that vanished first.
    await deleteLinkIfPresent(innerHostLink, inHost);
    await deleteLinkIfPresent(outerHostLink, inHost);
    return existed;
  });
}

/**
 * Reads back a network's gateway on a host (for an agent re-adopting after a restart), or
 * undefined when it is missing or incomplete (router namespace, a leg or its masquerading).
 */
export async function inspectGateway(options: GatewayKey): Promise<Gateway | undefined> {
  const call: CallOptions = { signal: options.signal, timeoutMs: options.timeoutMs };
  const routerNs = routerNamespaceFor(options.hostNs, options.networkKey);
  if (!(await namespaceExists(options.hostNs, call)) || !(await namespaceExists(routerNs, call))) return undefined;
  const inHost: CommandOptions = { ...call, netns: options.hostNs };
  const inRouter: CommandOptions = { ...call, netns: routerNs };
  const { innerHostLink, outerHostLink } = gatewayLinkNamesFor(options.networkKey);
  if (!(await findLink(innerHostLink, inHost)) || !(await findLink(outerHostLink, inHost))) return undefined;
  const inner = await addressOf(ROUTER_INNER_INTERFACE, inRouter);
  const outer = await addressOf(ROUTER_OUTER_INTERFACE, inRouter);
  if (!inner || !outer) return undefined;
  const subnet = parseIpv4Cidr(inner, 'gateway address');
  const addresses = linkAddresses(`${parseIpv4Cidr(outer).network}/30`);
  // Without its masquerade entry the gateway is half-built (a crash): ensureGateway completes it.
  const source = (await readHostTable(inHost))?.masqueradeSources.find((entry) => entry.address === addresses.routerOuterIp);
  if (!source) return undefined;
  return {
    routerNs,
    innerHostLink,
    outerHostLink,
    gatewayIp: subnet.address,
    subnet: `${subnet.network}/${subnet.prefixLength}`,
    ...addresses,
    uplinkDevice: source.device,
  };
}

/**
 * Replaces the network's port forwards on the host with `forwards`, without a moment where a
 * forward is half-applied (see the file header). Throws `NET_GATEWAY_NOT_FOUND` without a
 * gateway, `NET_INVALID_PORT_FORWARD` for a bad forward and `NET_PORT_FORWARD_TAKEN` when another
 * network on the host already forwards one of the host ports; then nothing changes. Resolves with
 * the forwards now in force.
 */
export async function setPortForwards(options: SetPortForwardsOptions): Promise<ActivePortForward[]> {
  return withHostLock(options.hostNs, () => replaceForwards(options, () => options.forwards));
}

/** The network's port forwards in force on the host, sorted by protocol and host port. */
export async function listPortForwards(options: GatewayKey): Promise<ActivePortForward[]> {
  const gateway = await requireGateway(options);
  return readForwards(options, gateway);
}

/**
 * Adds one forward to the network's set. Throws `NET_PORT_FORWARD_TAKEN` when the host port is
 * already forwarded on the host, by this network or another one.
 */
export async function addPortForward(options: GatewayKey & PortForward & { listenAddress: string }): Promise<ActivePortForward[]> {
  const { hostNs, networkKey, signal, timeoutMs, ...forward } = options;
  return withHostLock(hostNs, () =>
    replaceForwards({ hostNs, networkKey, signal, timeoutMs }, (current) => {
      const clash = current.find((entry) => entry.protocol === forward.protocol && entry.hostPort === forward.hostPort);
      if (clash) throw portTaken(hostNs, forward.protocol, forward.hostPort, `network ${networkKey}`);
      return [...current, forward];
    }),
  );
}

/** Removes one forward of the network; resolves false when there was none for that port. */
export async function removePortForward(options: GatewayKey & { protocol: 'tcp' | 'udp'; hostPort: number }): Promise<boolean> {
  let found = false;
  await withHostLock(options.hostNs, () =>
    replaceForwards(options, (current) => {
      const kept = current.filter((entry) => !(entry.protocol === options.protocol && entry.hostPort === options.hostPort));
      found = kept.length !== current.length;
      return kept;
    }),
  );
  return found;
}

/** The three-step replacement of a network's forwards; `choose` sees the current set. */
async function replaceForwards(
  options: GatewayKey & { listenAddress?: string },
  choose: (current: ActivePortForward[]) => readonly PortForward[],
): Promise<ActivePortForward[]> {
  const gateway = await requireGateway(options);
  const call: CallOptions = { signal: options.signal, timeoutMs: options.timeoutMs };
  const inHost: CommandOptions = { ...call, netns: options.hostNs };
  const inRouter: CommandOptions = { ...call, netns: gateway.routerNs };
  const current = await readForwards(options, gateway);
  const wanted = normalizePortForwards(choose(current), gateway.subnet, options.listenAddress);

  // requireGateway saw the table; only a concurrent removal from outside can have taken it.
  const table = await readHostTable(inHost);
  if (!table) throw gatewayNotFound(options);
  for (const forward of wanted) {
    const owner = table.forwards.find((entry) => entry.protocol === forward.protocol && entry.hostPort === forward.hostPort);
    if (owner && owner.routerIp !== gateway.routerOuterIp) {
      throw portTaken(options.hostNs, forward.protocol, forward.hostPort, `the network behind router ${owner.routerIp}`);
    }
  }
  const routerMap = await readRouterMap(inRouter);
  const keyOf = (entry: { protocol: string; hostPort: number }) => `${entry.protocol} . ${entry.hostPort}`;
  const wantedKeys = new Set(wanted.map(keyOf));
  const routerName = `ip ${ROUTER_TABLE}`;

  // 1. The router learns the new forwards and keeps the old ones.
  const union = [...routerMap.filter((entry) => !wantedKeys.has(keyOf(entry))), ...wanted];
  const widen = diffRouterMap(routerMap, union, routerName, keyOf);
  if (widen.length > 0) await runCommand('nft', ['-f', '-'], { ...inRouter, input: [...widen, ''].join('\n') });
  const widened = await readRouterMap(inRouter);

  // 2. The host swaps its entries in one transaction; `create` fails if a port was taken since.
  const hostName = `ip ${HOST_GATEWAY_TABLE}`;
  const mineNow = table.forwards.filter((entry) => entry.routerIp === gateway.routerOuterIp);
  const hostLines: string[] = [];
  for (const entry of mineNow) {
    if (!wantedKeys.has(keyOf(entry))) hostLines.push(`delete element ${hostName} forwards { ${keyOf(entry)} }`);
  }
  for (const listener of table.listeners) {
    const owned = mineNow.some((entry) => keyOf(entry) === keyOf(listener));
    const still = wanted.some((entry) => keyOf(entry) === keyOf(listener) && entry.listenAddress === listener.address);
    if (owned && !still) hostLines.push(`delete element ${hostName} listeners { ${listener.address} . ${keyOf(listener)} }`);
  }
  for (const entry of wanted) {
    if (!mineNow.some((old) => keyOf(old) === keyOf(entry))) {
      hostLines.push(`create element ${hostName} forwards { ${keyOf(entry)} : ${gateway.routerOuterIp} . ${entry.hostPort} }`);
    }
    if (!table.listeners.some((old) => keyOf(old) === keyOf(entry) && old.address === entry.listenAddress)) {
      hostLines.push(`add element ${hostName} listeners { ${entry.listenAddress} . ${keyOf(entry)} }`);
    }
  }
  if (hostLines.length > 0) {
    try {
      await runCommand('nft', ['-f', '-'], { ...inHost, input: [...hostLines, ''].join('\n') });
    } catch (error) {
      // Back to exactly the old router map; the host transaction changed nothing.
      const back = diffRouterMap(widened, routerMap, routerName, keyOf);
      if (back.length > 0) await runCommand('nft', ['-f', '-'], { ...inRouter, input: [...back, ''].join('\n') }).catch(() => {});
      if (/File exists/.test(String((error as Error).message))) {
        throw new NubisError('NET_PORT_FORWARD_TAKEN', `Another network on ${options.hostNs} took one of the host ports meanwhile: choose other host ports`, {
          cause: error,
          details: { hostNs: options.hostNs },
        });
      }
      throw error;
    }
  }

  // 3. The router forgets what the host no longer sends it.
  const narrow = diffRouterMap(widened, wanted, routerName, keyOf);
  if (narrow.length > 0) await runCommand('nft', ['-f', '-'], { ...inRouter, input: [...narrow, ''].join('\n') });
  return readForwards(options, gateway);
}

/** The nft lines that turn router map `from` into exactly `to`. */
function diffRouterMap(
  from: readonly RouterMapEntry[],
  to: readonly RouterMapEntry[],
  routerName: string,
  keyOf: (entry: { protocol: string; hostPort: number }) => string,
): string[] {
  const lines: string[] = [];
  for (const entry of from) {
    const next = to.find((other) => keyOf(other) === keyOf(entry));
    if (!next || next.vmIp !== entry.vmIp || next.vmPort !== entry.vmPort) lines.push(`delete element ${routerName} forwards { ${keyOf(entry)} }`);
  }
  for (const entry of to) {
    const before = from.find((other) => keyOf(other) === keyOf(entry));
    if (!before || before.vmIp !== entry.vmIp || before.vmPort !== entry.vmPort) {
      lines.push(`add element ${routerName} forwards { ${keyOf(entry)} : ${entry.vmIp} . ${entry.vmPort} }`);
    }
  }
  return lines;
}

function portTaken(hostNs: string, protocol: string, hostPort: number, owner: string): NubisError {
  return new NubisError('NET_PORT_FORWARD_TAKEN', `Host port ${protocol} ${hostPort} is already forwarded on ${hostNs} to ${owner}: choose another host port`, {
    details: { hostNs, protocol, hostPort },
  });
}

async function requireGateway(options: GatewayKey): Promise<Gateway> {
  const gateway = await inspectGateway(options);
  if (!gateway) throw gatewayNotFound(options);
  return gateway;
}

function gatewayNotFound(options: GatewayKey): NubisError {
  return new NubisError('NET_GATEWAY_NOT_FOUND', `Network ${options.networkKey} has no gateway on ${options.hostNs}: ensure the gateway first`, {
    details: { hostNs: options.hostNs, networkKey: options.networkKey },
  });
}

/** The forwards in force: router entries whose host port the host sends to this router. */
async function readForwards(options: GatewayKey, gateway: Gateway): Promise<ActivePortForward[]> {
  const call: CallOptions = { signal: options.signal, timeoutMs: options.timeoutMs };
  const table = await readHostTable({ ...call, netns: options.hostNs });
  const routerMap = await readRouterMap({ ...call, netns: gateway.routerNs });
  const result: ActivePortForward[] = [];
  for (const entry of routerMap) {
    const same = (other: { protocol: string; hostPort: number }) => other.protocol === entry.protocol && other.hostPort === entry.hostPort;
    if (!table?.forwards.some((other) => same(other) && other.routerIp === gateway.routerOuterIp)) continue;
    for (const listener of table.listeners.filter(same)) result.push({ ...entry, listenAddress: listener.address });
  }
  return result.sort((a, b) => a.protocol.localeCompare(b.protocol) || a.hostPort - b.hostPort);
}

interface RouterMapEntry {
  protocol: 'tcp' | 'udp';
  hostPort: number;
  vmIp: string;
  vmPort: number;
}

interface HostTableState {
  forwards: { protocol: 'tcp' | 'udp'; hostPort: number; routerIp: string }[];
  listeners: { address: string; protocol: 'tcp' | 'udp'; hostPort: number }[];
  masqueradeSources: { address: string; device: string }[];
}

/** The host table's maps and sets, or undefined when the host has no gateway table. */
async function readHostTable(inHost: CommandOptions): Promise<HostTableState | undefined> {
  const result = await runCommand('nft', ['-j', 'list', 'table', 'ip', HOST_GATEWAY_TABLE], { ...inHost, allowFailure: true });
  if (result.exitCode !== 0) {
    if (/No such file or directory/.test(result.stderr)) return undefined;
    throw new NubisError('NET_COMMAND_FAILED', `Cannot read table ${HOST_GATEWAY_TABLE} in ${inHost.netns}: ${result.stderr.trim()}`);
  }
  const sets = nftSets(result.stdout);
  return {
    forwards: (sets.get('forwards') ?? []).map((element) => {
      const [[protocol, hostPort], [routerIp]] = element as [[string, number], [string, number]];
      return { protocol: protocolOf(protocol), hostPort, routerIp };
    }),
    listeners: (sets.get('listeners') ?? []).map((element) => {
      const [address, protocol, hostPort] = element as [string, string, number];
      return { address, protocol: protocolOf(protocol), hostPort };
    }),
    masqueradeSources: (sets.get('masquerade_sources') ?? []).map((element) => {
      const [address, device] = element as [string, string];
      return { address, device };
    }),
  };
}

/** The router's forwards map (empty when the router has no table yet). */
async function readRouterMap(inRouter: CommandOptions): Promise<RouterMapEntry[]> {
  const result = await runCommand('nft', ['-j', 'list', 'map', 'ip', ROUTER_TABLE, 'forwards'], { ...inRouter, allowFailure: true });
  if (result.exitCode !== 0) {
    if (/No such file or directory/.test(result.stderr)) return [];
    throw new NubisError('NET_COMMAND_FAILED', `Cannot read map ${ROUTER_TABLE} forwards in ${inRouter.netns}: ${result.stderr.trim()}`);
  }
  return (nftSets(result.stdout).get('forwards') ?? []).map((element) => {
    const [[protocol, hostPort], [vmIp, vmPort]] = element as [[string, number], [string, number]];
    return { protocol: protocolOf(protocol), hostPort, vmIp, vmPort };
  });
}

/**
 * The elements of each set and map in `nft -j` output, concatenations as arrays (a map element
 * as `[key, value]`). Pure.
 */
export function nftSets(json: string): Map<string, unknown[]> {
  const parsed = JSON.parse(json) as { nftables?: Record<string, { name: string; elem?: unknown[] }>[] };
  const unwrap = (value: unknown): unknown => {
    if (value !== null && typeof value === 'object' && 'concat' in value) return (value as { concat: unknown[] }).concat.map(unwrap);
    if (value !== null && typeof value === 'object' && 'elem' in value) return unwrap((value as { elem: { val: unknown } }).elem.val);
    return value;
  };
  const sets = new Map<string, unknown[]>();
  for (const entry of parsed.nftables ?? []) {
    const set = entry.set ?? entry.map;
    if (set)
      sets.set(
        set.name,
        (set.elem ?? []).map((element) => (Array.isArray(element) ? element.map(unwrap) : unwrap(element))),
      );
  }
  return sets;
}

function protocolOf(value: string | number): 'tcp' | 'udp' {
  if (value === 'tcp' || value === 6) return 'tcp';
  if (value === 'udp' || value === 17) return 'udp';
  throw new NubisError('NET_COMMAND_FAILED', `nft listed protocol ${JSON.stringify(value)} where tcp or udp was expected`);
}

/** The existing link subnet of the outer leg, or a free one (the caller's, or from the key). */
async function chooseLinkSubnet(
  options: GatewayOptions,
  outerHostLink: string,
  inHost: CommandOptions,
  inRouter: CommandOptions,
): Promise<{ linkSubnet: string; present: boolean }> {
  const hostEnd = await findLink(outerHostLink, inHost);
  const routerEnd = await findLink(ROUTER_OUTER_INTERFACE, inRouter);
  const existing = hostEnd && routerEnd ? await addressOf(outerHostLink, inHost) : undefined;
  const requested = options.linkSubnet === undefined ? undefined : linkAddresses(options.linkSubnet).linkSubnet;
  if (existing) {
    const current = `${parseIpv4Cidr(existing).network}/30`;
    if (requested !== undefined && requested !== current) {
      throw new NubisError(
        'NET_LINK_CONFLICT',
        `The gateway of ${options.networkKey} on ${options.hostNs} uses link subnet ${current}, not ${requested}: remove the gateway first`,
        {
          details: { current, requested },
        },
      );
    }
    return { linkSubnet: current, present: true };
  }
  const taken = await linkSubnetsInUse(inHost);
  if (requested !== undefined) {
    if (taken.includes(requested)) {
      throw new NubisError('NET_LINK_CONFLICT', `Link subnet ${requested} is already in use on ${options.hostNs}`, { details: { linkSubnet: requested } });
    }
    return { linkSubnet: requested, present: Boolean(hostEnd && routerEnd) };
  }
  return { linkSubnet: pickLinkSubnet(options.networkKey, taken), present: Boolean(hostEnd && routerEnd) };
}

/** The /30 blocks of 169.254.0.0/16 that addresses in the host namespace fall into. */
async function linkSubnetsInUse(inHost: CommandOptions): Promise<string[]> {
  const entries = await ipJson<{ addr_info?: { family: string; local: string }[] }[]>(['addr', 'show'], inHost);
  return entries
    .flatMap((entry) => entry.addr_info ?? [])
    .filter((info) => info.family === 'inet' && cidrContains('169.254.0.0/16', info.local))
    .map((info) => `${parseIpv4Cidr(`${info.local}/30`).network}/30`);
}

/** The router addresses behind the host's gateway links (`ngo-...` with a /30). */
async function liveRouterAddresses(inHost: CommandOptions): Promise<{ link: string; routerOuterIp: string }[]> {
  const links = (await listLinks(inHost)).filter((link) => link.ifname.startsWith('ngo-'));
  const result: { link: string; routerOuterIp: string }[] = [];
  for (const link of links) {
    const address = await addressOf(link.ifname, inHost);
    if (address && parseIpv4Cidr(address).prefixLength === 30) {
      result.push({ link: link.ifname, routerOuterIp: linkAddresses(`${parseIpv4Cidr(address).network}/30`).routerOuterIp });
    }
  }
  return result;
}

/** The first IPv4 address (with prefix) of a device, or undefined. */
async function addressOf(device: string, options: CommandOptions): Promise<string | undefined> {
  const entries = await ipJson<{ addr_info?: { family: string; local: string; prefixlen: number }[] }[]>(['addr', 'show', 'dev', device], {
    ...options,
    allowFailure: true,
  });
  const info = (entries[0]?.addr_info ?? []).find((entry) => entry.family === 'inet');
  return info === undefined ? undefined : `${info.local}/${info.prefixlen}`;
}

/** Gateway work on one host namespace runs one call at a time: they share the host's table. */
const hostLocks = new Map<string, Promise<unknown>>();

async function withHostLock<T>(hostNs: string, work: () => Promise<T>): Promise<T> {
  const previous = hostLocks.get(hostNs) ?? Promise.resolve();
  const run = previous.then(work, work);
  const settled = run.catch(() => {});
  hostLocks.set(hostNs, settled);
  try {
    return await run;
  } finally {
    if (hostLocks.get(hostNs) === settled) hostLocks.delete(hostNs);
  }
}

function isPort(value: number): boolean {
  return Number.isInteger(value) && value >= 1 && value <= 65535;
}
