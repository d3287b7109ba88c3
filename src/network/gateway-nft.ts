// The nftables side of the gateways: the tables' shapes, reading their maps and sets back, and the
// scripts that change them. State lives in nftables itself, so an agent restart re-reads it: in
// each host namespace one table `ip nubis_gateway` with a map `forwards` (protocol . hostPort ->
// router . hostPort, whose key uniqueness makes the kernel refuse a host port forwarded twice), a
// set `listeners` (listenAddress . protocol . hostPort) and a set `masquerade_sources` (router .
// uplink); in each router a table `ip nubis_router` with a map `forwards` (protocol . hostPort ->
// vmIp . vmPort). Every change of a table is one `nft -f` transaction. The model is described at
// the top of gateway.ts.
import { NubisError } from '../core/errors.ts';
import { parseIpv4Cidr } from './addresses.ts';
import { ROUTER_OUTER_INTERFACE } from './gateway-layout.ts';
import { runCommand, type CommandOptions } from './ip-command.ts';

/** The nftables table (ip family) in each host namespace that has gateways. */
export const HOST_GATEWAY_TABLE = 'nubis_gateway';

/** The nftables table (ip family) in each router namespace. */
export const ROUTER_TABLE = 'nubis_router';

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
 * The nft script that shapes the host table and makes it masquerade `routerOuterIp` out of
 * `uplinkDevice`, dropping an entry of that router for another uplink. Pure.
 */
export function hostMasqueradeScript(sources: HostTableState['masqueradeSources'], routerOuterIp: string, uplinkDevice: string): string {
  const stale = sources.filter((source) => source.address === routerOuterIp && source.device !== uplinkDevice);
  const mine = `${routerOuterIp} . ${JSON.stringify(uplinkDevice)}`;
  return [
    renderHostTable(),
    ...stale.map((source) => `delete element ip ${HOST_GATEWAY_TABLE} masquerade_sources { ${source.address} . ${JSON.stringify(source.device)} }`),
    `add element ip ${HOST_GATEWAY_TABLE} masquerade_sources { ${mine} }`,
    '',
  ].join('\n');
}

/**
 * The nft lines that take out of the host table every forward, listener and masquerade entry
 * not of a router in `liveRouterIps` (listeners without a forward too), or that delete the table
 * when nothing of it is left. Pure.
 */
export function hostTableSweepScript(table: HostTableState, liveRouterIps: ReadonlySet<string>): string[] {
  const goneForwards = table.forwards.filter((entry) => !liveRouterIps.has(entry.routerIp));
  const goneKeys = new Set(goneForwards.map((entry) => `${entry.protocol} ${entry.hostPort}`));
  const goneListeners = table.listeners.filter((entry) => {
    const key = `${entry.protocol} ${entry.hostPort}`;
    const orphan = !table.forwards.some((forward) => forward.protocol === entry.protocol && forward.hostPort === entry.hostPort);
    return orphan || goneKeys.has(key);
  });
  const goneSources = table.masqueradeSources.filter((entry) => !liveRouterIps.has(entry.address));
  const name = `ip ${HOST_GATEWAY_TABLE}`;
  if (goneSources.length === table.masqueradeSources.length && goneForwards.length === table.forwards.length) {
    return [`delete table ${name}`];
  }
  return [
    ...goneForwards.map((entry) => `delete element ${name} forwards { ${entry.protocol} . ${entry.hostPort} }`),
    ...goneListeners.map((entry) => `delete element ${name} listeners { ${entry.address} . ${entry.protocol} . ${entry.hostPort} }`),
    ...goneSources.map((entry) => `delete element ${name} masquerade_sources { ${entry.address} . ${JSON.stringify(entry.device)} }`),
  ];
}

/** The nft lines that turn router map `from` into exactly `to`. */
export function diffRouterMap(
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

/** One entry of a router's forwards map: protocol . hostPort -> vmIp . vmPort. */
export interface RouterMapEntry {
  protocol: 'tcp' | 'udp';
  hostPort: number;
  vmIp: string;
  vmPort: number;
}

/** The host table's maps and sets, as read back. */
export interface HostTableState {
  forwards: { protocol: 'tcp' | 'udp'; hostPort: number; routerIp: string }[];
  listeners: { address: string; protocol: 'tcp' | 'udp'; hostPort: number }[];
  masqueradeSources: { address: string; device: string }[];
}

/** The host table's maps and sets, or undefined when the host has no gateway table. */
export async function readHostTable(inHost: CommandOptions): Promise<HostTableState | undefined> {
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
export async function readRouterMap(inRouter: CommandOptions): Promise<RouterMapEntry[]> {
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
