// Where a network's gateway lives on a host and what its parts are called and addressed: the
// router namespace, the legs' names, the gateway's MAC and the /30 link subnet between router and
// host. Pure; the model is described at the top of gateway.ts.
import { createHash } from 'node:crypto';
import { NubisError } from '../core/errors.ts';
import { ipv4ToNumber, numberToIpv4, parseIpv4Cidr } from './addresses.ts';
import { shortName } from './names.ts';
import type { CallOptions } from './underlay.ts';

/** The router's leg on the network's bridge, inside the router namespace. */
export const ROUTER_INNER_INTERFACE = 'gw-in';

/** The router's leg towards the host namespace, inside the router namespace. */
export const ROUTER_OUTER_INTERFACE = 'gw-out';

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

/** The error for a network without a gateway on the host. */
export function gatewayNotFound(options: GatewayKey): NubisError {
  return new NubisError('NET_GATEWAY_NOT_FOUND', `Network ${options.networkKey} has no gateway on ${options.hostNs}: ensure the gateway first`, {
    details: { hostNs: options.hostNs, networkKey: options.networkKey },
  });
}
