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
// The parts live beside this file: names and link addresses in gateway-layout.ts, the nftables
// tables (state lives in nftables itself, so an agent restart re-reads it) in gateway-nft.ts, and
// the never-half-applied replacement of a network's forwards in port-forwards.ts. This file puts
// a gateway up, takes it down and reads it back, one call per host namespace at a time.
// Not supported: a VM reaching its own network's forward through the host address (hairpin NAT).
import { NubisError } from '../core/errors.ts';
import { Revert } from '../core/revert.ts';
import { cidrContains, parseIpv4Cidr } from './addresses.ts';
import {
  gatewayLinkNamesFor,
  gatewayMacFor,
  gatewayNotFound,
  linkAddresses,
  pickLinkSubnet,
  ROUTER_INNER_INTERFACE,
  ROUTER_OUTER_INTERFACE,
  routerNamespaceFor,
  type Gateway,
  type GatewayKey,
} from './gateway-layout.ts';
import { hostMasqueradeScript, hostTableSweepScript, readHostTable, renderRouterTable } from './gateway-nft.ts';
import { findLink, ip, ipJson, listLinks, runCommand, setExactAddress, setSysctl, type CommandOptions } from './ip-command.ts';
import { bridgeNameFor } from './names.ts';
import { createNamespace, deleteNamespace, namespaceExists } from './namespaces.ts';
import { plugNamespace } from './overlay.ts';
import { portTaken, readForwards, replaceForwards, type ActivePortForward, type PortForward, type SetPortForwardsOptions } from './port-forwards.ts';
import { DEFAULT_UNDERLAY_DEVICE, deleteLinkIfPresent, type CallOptions } from './underlay.ts';

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

/**
 * Makes sure the network has its NAT gateway on the host: router namespace, inner leg on the
 * bridge with the gateway address, outer leg to the host with the default route, forwarding and
 * masquerading in both namespaces. Idempotent (existing forwards are kept); on failure every step
 * this call made is undone. Throws `NET_NETWORK_NOT_FOUND` when the network is not on the host and
 * `NET_LINK_NOT_FOUND` when the uplink device is missing.
 */
export async function ensureGateway(options: GatewayOptions): Promise<Gateway> {
  const plan = planGateway(options);
  return withHostLock(options.hostNs, () =>
    Revert.run(async (revert) => {
      if (!(await findLink(plan.uplinkDevice, plan.inHost))) {
        throw new NubisError('NET_LINK_NOT_FOUND', `Uplink device ${plan.uplinkDevice} does not exist in namespace ${options.hostNs}`, {
          details: { hostNs: options.hostNs, uplinkDevice: plan.uplinkDevice },
        });
      }
      await ensureRouterNamespace(plan, revert);
      await ensureInnerLeg(plan, revert);
      const addresses = await ensureOuterLeg(plan, revert);
      await ensureNat(plan, addresses.routerOuterIp);
      const { routerNs, innerHostLink, outerHostLink, gatewayIp, subnet, uplinkDevice } = plan;
      return { routerNs, innerHostLink, outerHostLink, gatewayIp, subnet, ...addresses, uplinkDevice };
    }),
  );
}

/** What each step of {@link ensureGateway} works with: names, addresses and where to run. */
interface GatewayPlan {
  options: GatewayOptions;
  call: CallOptions;
  inHost: CommandOptions;
  inRouter: CommandOptions;
  routerNs: string;
  innerHostLink: string;
  outerHostLink: string;
  uplinkDevice: string;
  gatewayIp: string;
  /** The gateway address with the subnet's prefix length, e.g. `10.0.0.1/24`. */
  gatewayCidr: string;
  /** The tenant subnet, normalised, e.g. `10.0.0.0/24`. */
  subnet: string;
}

/** Checks the addresses of {@link GatewayOptions} and names everything; throws `NET_INVALID_ADDRESS`. */
function planGateway(options: GatewayOptions): GatewayPlan {
  const gateway = parseIpv4Cidr(options.gatewayCidr, 'gateway address');
  const subnet = parseIpv4Cidr(options.subnet, 'subnet');
  if (gateway.network !== subnet.network || gateway.prefixLength !== subnet.prefixLength || gateway.address === subnet.network) {
    throw new NubisError('NET_INVALID_ADDRESS', `Gateway address ${options.gatewayCidr} is not a host address of subnet ${options.subnet}`, {
      details: { gatewayCidr: options.gatewayCidr, subnet: options.subnet },
    });
  }
  const call: CallOptions = { signal: options.signal, timeoutMs: options.timeoutMs };
  const routerNs = routerNamespaceFor(options.hostNs, options.networkKey);
  return {
    options,
    call,
    inHost: { ...call, netns: options.hostNs },
    inRouter: { ...call, netns: routerNs },
    routerNs,
    ...gatewayLinkNamesFor(options.networkKey),
    uplinkDevice: options.uplinkDevice ?? DEFAULT_UNDERLAY_DEVICE,
    gatewayIp: gateway.address,
    gatewayCidr: `${gateway.address}/${gateway.prefixLength}`,
    subnet: `${subnet.network}/${subnet.prefixLength}`,
  };
}

/** The router namespace, forwarding on. */
async function ensureRouterNamespace(plan: GatewayPlan, revert: Revert): Promise<void> {
  const { routerNs, call, inRouter } = plan;
  if (await createNamespace(routerNs, call)) {
    revert.add(`delete namespace ${routerNs}`, () => deleteNamespace(routerNs, { ...call, killProcesses: true }));
    // The networks are IPv4; a router soliciting IPv6 would only add noise to the segment.
    await setSysctl('net.ipv6.conf.all.disable_ipv6', '1', inRouter);
    await setSysctl('net.ipv6.conf.default.disable_ipv6', '1', inRouter);
  }
  await setSysctl('net.ipv4.ip_forward', '1', inRouter);
}

/** Inner leg: the gateway address on the network's bridge. */
async function ensureInnerLeg(plan: GatewayPlan, revert: Revert): Promise<void> {
  const { options, innerHostLink, inHost, inRouter } = plan;
  if (!(await findLink(innerHostLink, inHost)) || !(await findLink(ROUTER_INNER_INTERFACE, inRouter))) {
    await deleteLinkIfPresent(innerHostLink, inHost);
    await deleteLinkIfPresent(ROUTER_INNER_INTERFACE, inRouter);
    await plugNamespace({
      ...plan.call,
      hostNs: options.hostNs,
      networkKey: options.networkKey,
      hostLinkName: innerHostLink,
      peerNs: plan.routerNs,
      peerName: ROUTER_INNER_INTERFACE,
      mac: gatewayMacFor(options.networkKey),
    });
    revert.add(`delete veth ${innerHostLink}`, () => deleteLinkIfPresent(innerHostLink, inHost));
  } else {
    await ip(['link', 'set', innerHostLink, 'master', bridgeNameFor(options.networkKey), 'up'], inHost);
    await ip(['link', 'set', ROUTER_INNER_INTERFACE, 'up'], inRouter);
  }
  await setExactAddress(ROUTER_INNER_INTERFACE, plan.gatewayCidr, inRouter);
}

/** Outer leg: a /30 to the host, the router's way out. */
async function ensureOuterLeg(plan: GatewayPlan, revert: Revert): Promise<ReturnType<typeof linkAddresses>> {
  const { outerHostLink, inHost, inRouter } = plan;
  const link = await chooseLinkSubnet(plan.options, outerHostLink, inHost, inRouter);
  if (!link.present) {
    await deleteLinkIfPresent(outerHostLink, inHost);
    await deleteLinkIfPresent(ROUTER_OUTER_INTERFACE, inRouter);
    await ip(['link', 'add', outerHostLink, 'type', 'veth', 'peer', 'name', ROUTER_OUTER_INTERFACE, 'netns', plan.routerNs], inHost);
    revert.add(`delete veth ${outerHostLink}`, () => deleteLinkIfPresent(outerHostLink, inHost));
    await ip(['link', 'set', outerHostLink, 'addrgenmode', 'none'], inHost);
  }
  const addresses = linkAddresses(link.linkSubnet);
  await setExactAddress(outerHostLink, `${addresses.hostLinkIp}/30`, inHost);
  await ip(['link', 'set', outerHostLink, 'up'], inHost);
  await setExactAddress(ROUTER_OUTER_INTERFACE, `${addresses.routerOuterIp}/30`, inRouter);
  await ip(['link', 'set', ROUTER_OUTER_INTERFACE, 'up'], inRouter);
  await ip(['route', 'replace', 'default', 'via', addresses.hostLinkIp, 'dev', ROUTER_OUTER_INTERFACE], inRouter);
  return addresses;
}

/** NAT: the router hides the tenant subnet behind its outer address, the host hides that. */
async function ensureNat(plan: GatewayPlan, routerOuterIp: string): Promise<void> {
  await runCommand('nft', ['-f', '-'], { ...plan.inRouter, input: renderRouterTable(plan.subnet) });
  await setSysctl('net.ipv4.ip_forward', '1', plan.inHost);
  const sources = (await readHostTable(plan.inHost))?.masqueradeSources ?? [];
  // The last step, and one transaction: if it fails it changed nothing, so it has no undo.
  await runCommand('nft', ['-f', '-'], { ...plan.inHost, input: hostMasqueradeScript(sources, routerOuterIp, plan.uplinkDevice) });
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
      const script = hostTableSweepScript(table, live);
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
 * forward is half-applied (see port-forwards.ts). Throws `NET_GATEWAY_NOT_FOUND` without a
 * gateway, `NET_INVALID_PORT_FORWARD` for a bad forward and `NET_PORT_FORWARD_TAKEN` when another
 * network on the host already forwards one of the host ports; then nothing changes. Resolves with
 * the forwards now in force.
 */
export async function setPortForwards(options: SetPortForwardsOptions): Promise<ActivePortForward[]> {
  return withHostLock(options.hostNs, async () => replaceForwards(options, await requireGateway(options), () => options.forwards));
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
  const key = { hostNs, networkKey, signal, timeoutMs };
  return withHostLock(hostNs, async () =>
    replaceForwards(key, await requireGateway(key), (current) => {
      const clash = current.find((entry) => entry.protocol === forward.protocol && entry.hostPort === forward.hostPort);
      if (clash) throw portTaken(hostNs, forward.protocol, forward.hostPort, `network ${networkKey}`);
      return [...current, forward];
    }),
  );
}

/** Removes one forward of the network; resolves false when there was none for that port. */
export async function removePortForward(options: GatewayKey & { protocol: 'tcp' | 'udp'; hostPort: number }): Promise<boolean> {
  let found = false;
  await withHostLock(options.hostNs, async () =>
    replaceForwards(options, await requireGateway(options), (current) => {
      const kept = current.filter((entry) => !(entry.protocol === options.protocol && entry.hostPort === options.hostPort));
      found = kept.length !== current.length;
      return kept;
    }),
  );
  return found;
}

/** The network's gateway on the host; throws `NET_GATEWAY_NOT_FOUND`. */
async function requireGateway(options: GatewayKey): Promise<Gateway> {
  const gateway = await inspectGateway(options);
  if (!gateway) throw gatewayNotFound(options);
  return gateway;
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
