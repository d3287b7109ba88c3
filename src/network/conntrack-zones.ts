// A conntrack zone per tenant network inside a host namespace. Bridged IPv4 passes the host's
// connection tracking (br_netfilter, which the stateful security groups need: firewall.ts), and
// conntrack tells connections apart by addresses and ports only. Two networks with the same subnet
// on one host would share its entries: a flow of one network made a packet of the other look like
// its reply, which a closed port then let in (test/network/firewall.test.ts). So each network's
// bridge maps to a zone of its own before conntrack sees a packet: a chain at priority raw (-300)
// runs before conntrack (-200), as OpenStack's hybrid firewall does with `-j CT --zone` per network.
// The zone itself comes from the control plane (a number stored with the network).
import { NubisError } from '../core/errors.ts';
import { runCommand, type CommandOptions } from './ip-command.ts';
import { bridgeNameFor } from './names.ts';
import type { NetworkOnHostKey } from './overlay.ts';

/** The nftables table (ip family) in each host namespace that maps network bridges to zones. */
export const CONNTRACK_ZONE_TABLE = 'nubis_ct_zones';

/** Zone 0 is everyone's default; a network gets one of these (a 16-bit number, nf_conntrack_zones.h). */
export const MIN_CONNTRACK_ZONE = 1;
export const MAX_CONNTRACK_ZONE = 65_535;

/** Throws `NET_INVALID_CT_ZONE` unless `zone` is an integer from 1 to 65535. */
export function assertConntrackZone(zone: number): void {
  if (!Number.isInteger(zone) || zone < MIN_CONNTRACK_ZONE || zone > MAX_CONNTRACK_ZONE) {
    throw new NubisError('NET_INVALID_CT_ZONE', `Conntrack zone ${zone} is not valid: use an integer from 1 to 65535`, { details: { zone } });
  }
}

/**
 * Throws `NET_INVALID_NAME` unless `name` is a bridge name that may stand in an nft script as it
 * is: letters, digits, '-', '_' and '.', at most 15 characters (what bridgeNameFor makes).
 */
function assertBridgeName(name: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/.test(name)) {
    throw new NubisError('NET_INVALID_NAME', `Bridge name ${JSON.stringify(name)} is not valid here: use letters, digits, '-', '_' or '.'`, {
      details: { name },
    });
  }
}

/**
 * The nft script that shapes the zone table and maps `bridge` to `zone`, replacing the zone it had
 * (`previous`). Pure; throws on a value that does not have its strict format.
 */
export function conntrackZoneScript(bridge: string, zone: number, previous?: number): string {
  assertBridgeName(bridge);
  assertConntrackZone(zone);
  if (previous !== undefined) assertConntrackZone(previous);
  const table = `ip ${CONNTRACK_ZONE_TABLE}`;
  return [
    `add table ${table}`,
    `add map ${table} zones { typeof iifname : ct zone; }`,
    // Bridged packets show the bridge as their input device at the IP hooks (HOST-FACTS).
    `add chain ${table} prerouting { type filter hook prerouting priority raw; policy accept; }`,
    `flush chain ${table} prerouting`,
    `add rule ${table} prerouting ct zone set iifname map @zones`,
    ...(previous === undefined ? [] : [`delete element ${table} zones { "${bridge}" }`]),
    `add element ${table} zones { "${bridge}" : ${zone} }`,
    '',
  ].join('\n');
}

/** The zone of each bridge in the host namespace's zone table; empty without the table. */
export async function readConntrackZones(options: { hostNs: string } & Pick<CommandOptions, 'signal' | 'timeoutMs'>): Promise<Map<string, number>> {
  const inHost: CommandOptions = { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs };
  const result = await runCommand('nft', ['-j', 'list', 'map', 'ip', CONNTRACK_ZONE_TABLE, 'zones'], { ...inHost, allowFailure: true });
  if (result.exitCode !== 0) {
    if (/No such file or directory/.test(result.stderr)) return new Map();
    throw new NubisError('NET_COMMAND_FAILED', `Cannot read map ${CONNTRACK_ZONE_TABLE} zones in ${options.hostNs}: ${result.stderr.trim()}`);
  }
  const parsed = JSON.parse(result.stdout) as { nftables?: Array<{ map?: { elem?: Array<[string, number]> } }> };
  const zones = new Map<string, number>();
  for (const entry of parsed.nftables ?? []) for (const [bridge, zone] of entry.map?.elem ?? []) zones.set(bridge, zone);
  return zones;
}

/**
 * Puts the network's traffic on the host in conntrack zone `zone` (one nft transaction, so the
 * mapping is never missing while it changes). Idempotent. The network's bridge need not exist yet.
 */
export async function setConntrackZone(options: NetworkOnHostKey & { zone: number }): Promise<void> {
  const bridge = bridgeNameFor(options.networkKey);
  assertConntrackZone(options.zone);
  const previous = (await readConntrackZones(options)).get(bridge);
  if (previous === options.zone) return;
  await runCommand('nft', ['-f', '-'], {
    netns: options.hostNs,
    signal: options.signal,
    timeoutMs: options.timeoutMs,
    input: conntrackZoneScript(bridge, options.zone, previous),
  });
}

/** Takes the network's zone off the host, and the table when no zone is left. Missing is not an error. */
export async function removeConntrackZone(options: NetworkOnHostKey): Promise<void> {
  const bridge = bridgeNameFor(options.networkKey);
  assertBridgeName(bridge);
  const zones = await readConntrackZones(options);
  if (!zones.has(bridge)) return;
  const table = `ip ${CONNTRACK_ZONE_TABLE}`;
  const script = zones.size === 1 ? `delete table ${table}\n` : `delete element ${table} zones { "${bridge}" }\n`;
  await runCommand('nft', ['-f', '-'], { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs, input: script });
}
