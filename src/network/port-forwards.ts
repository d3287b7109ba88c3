// A network's port forwards on a host: checking a forward set, reading the forwards in force, and
// replacing them. A replacement first widens the router's map to old plus new, then swaps the
// host's entries, then narrows the router's map, so every host entry always has its router
// entry: never half-applied. The model is described at the top of gateway.ts; the callers hold
// the host's lock.
import { NubisError } from '../core/errors.ts';
import { cidrContains, ipv4ToNumber } from './addresses.ts';
import { gatewayNotFound, type Gateway, type GatewayKey } from './gateway-layout.ts';
import { diffRouterMap, HOST_GATEWAY_TABLE, readHostTable, readRouterMap, ROUTER_TABLE, type HostTableState } from './gateway-nft.ts';
import { runCommand, type CommandOptions } from './ip-command.ts';
import type { CallOptions } from './underlay.ts';

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

/**
 * The three-step replacement of a network's forwards (see the file header); `choose` sees the
 * current set. Throws `NET_PORT_FORWARD_TAKEN` when another network holds a wanted host port.
 */
export async function replaceForwards(
  options: GatewayKey & { listenAddress?: string },
  gateway: Gateway,
  choose: (current: ActivePortForward[]) => readonly PortForward[],
): Promise<ActivePortForward[]> {
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
  const wantedKeys = new Set(wanted.map(keyOf));
  const routerName = `ip ${ROUTER_TABLE}`;

  // 1. The router learns the new forwards and keeps the old ones.
  const union = [...routerMap.filter((entry) => !wantedKeys.has(keyOf(entry))), ...wanted];
  const widen = diffRouterMap(routerMap, union, routerName, keyOf);
  if (widen.length > 0) await runCommand('nft', ['-f', '-'], { ...inRouter, input: [...widen, ''].join('\n') });
  const widened = await readRouterMap(inRouter);

  // 2. The host swaps its entries in one transaction; `create` fails if a port was taken since.
  const hostLines = hostSwapLines(table, wanted, gateway.routerOuterIp);
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

/** A forward's key in the nft maps: `protocol . hostPort`. */
function keyOf(entry: { protocol: string; hostPort: number }): string {
  return `${entry.protocol} . ${entry.hostPort}`;
}

/**
 * Step 2's nft lines: the host table's forwards and listeners of the router at `routerOuterIp`
 * become exactly `wanted` (new forwards with `create`, so a port taken since fails the whole
 * transaction). Pure.
 */
function hostSwapLines(table: HostTableState, wanted: readonly ActivePortForward[], routerOuterIp: string): string[] {
  const hostName = `ip ${HOST_GATEWAY_TABLE}`;
  const wantedKeys = new Set(wanted.map(keyOf));
  const mineNow = table.forwards.filter((entry) => entry.routerIp === routerOuterIp);
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
      hostLines.push(`create element ${hostName} forwards { ${keyOf(entry)} : ${routerOuterIp} . ${entry.hostPort} }`);
    }
    if (!table.listeners.some((old) => keyOf(old) === keyOf(entry) && old.address === entry.listenAddress)) {
      hostLines.push(`add element ${hostName} listeners { ${entry.listenAddress} . ${keyOf(entry)} }`);
    }
  }
  return hostLines;
}

/** The forwards in force: router entries whose host port the host sends to this router. */
export async function readForwards(options: GatewayKey, gateway: Gateway): Promise<ActivePortForward[]> {
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

/** The error for a host port that another forward already holds. */
export function portTaken(hostNs: string, protocol: string, hostPort: number, owner: string): NubisError {
  return new NubisError('NET_PORT_FORWARD_TAKEN', `Host port ${protocol} ${hostPort} is already forwarded on ${hostNs} to ${owner}: choose another host port`, {
    details: { hostNs, protocol, hostPort },
  });
}

function isPort(value: number): boolean {
  return Number.isInteger(value) && value >= 1 && value <= 65535;
}
