// Per-port security groups and anti-spoofing for a VM port (a tap, or any bridge port) inside a
// host namespace. Two mechanisms, because of what this kernel offers (HOST-FACTS "Networking"):
// - Anti-spoofing is stateless, so it lives in an nftables bridge-family table keyed on the
//   port's `iifname`: frames from the VM must carry its own MAC and IP.
// - Security groups need connection tracking, which the bridge family lacks here; so, as
//   OpenStack's hybrid driver does, bridged IPv4 is passed through iptables
//   (net.bridge.bridge-nf-call-iptables=1) and a per-port chain matches
//   `-m physdev --physdev-out PORT --physdev-is-bridged` with conntrack.
import { createHash } from 'node:crypto';
import { NubisError } from '../core/errors.ts';
import { assertIpv4, normalizeMac, parseIpv4Cidr } from './addresses.ts';
import { runCommand, setSysctl, type CommandOptions } from './ip-command.ts';
import { assertInterfaceName } from './names.ts';
import type { CallOptions } from './underlay.ts';

/** The nftables bridge table holding every port's anti-spoofing chain in a host namespace. */
export const ANTI_SPOOF_TABLE = 'nubis_antispoof';

/** One allow rule for traffic towards the VM. */
export interface IngressRule {
  protocol: 'tcp' | 'udp' | 'icmp' | 'any';
  /** First port of the range (tcp/udp); all ports when omitted. */
  portMin?: number;
  /** Last port of the range; default `portMin`. */
  portMax?: number;
  /** Allowed sources, e.g. `0.0.0.0/0` or `10.0.0.0/24`. */
  sourceCidr: string;
}

/** One allow rule for connections the VM opens; with none at all, egress is open. */
export interface EgressRule {
  protocol: 'tcp' | 'udp' | 'icmp' | 'any';
  portMin?: number;
  portMax?: number;
  /** Allowed destinations, e.g. `0.0.0.0/0`. */
  destinationCidr: string;
}

/** What {@link applyPortFirewall} needs. */
export interface PortFirewallOptions extends CallOptions {
  hostNs: string;
  /** The VM's port on the network bridge (its tap). */
  tapName: string;
  /** The VM's MAC: the only source MAC its port may send. */
  mac: string;
  /** The VM's IPv4 address: the only source address its port may send (plus DHCP from 0.0.0.0). */
  ip: string;
  /** Allowed new connections towards the VM; everything else new is dropped. */
  ingressRules: readonly IngressRule[];
  /** Addresses allowed to open any connection to the VM (the members of its security groups). */
  allowIngressFrom: readonly string[];
  /**
   * Allowed new connections from the VM. Undefined: egress is open. Otherwise everything new
   * the rules do not allow is dropped (replies and the VM's DHCP requests always pass).
   */
  egressRules?: readonly EgressRule[];
}

/** The names a port's firewall uses. */
export interface PortFirewallNames {
  /** The iptables chain (filter table) for traffic towards the port. */
  ingressChain: string;
  /** The iptables chain (filter table) for traffic from the port. */
  egressChain: string;
  /** The nftables chain in {@link ANTI_SPOOF_TABLE} for frames from the port. */
  antiSpoofChain: string;
}

/** The chain names of a port (stable: derived from the port name). */
export function portFirewallNames(tapName: string): PortFirewallNames {
  const hash = createHash('sha256').update(tapName).digest('hex').slice(0, 12);
  // iptables chain names are at most 28 characters.
  return { ingressChain: `nubis-in-${hash}`, egressChain: `nubis-out-${hash}`, antiSpoofChain: `port_${hash}` };
}

/**
 * Puts a port under its security groups and anti-spoofing, or replaces what it had: each of the
 * two rule sets is swapped in one atomic transaction (`iptables-restore --noflush`, `nft -f`), so
 * the port is never unprotected while rules change. Default: new ingress dropped except from
 * `allowIngressFrom` and what `ingressRules` allow; replies to the VM's own connections and DHCP
 * replies pass; egress is allowed. Frames from the port with another source MAC, another IPv4
 * source (other than a DHCP request from 0.0.0.0), ARP for another address, a DHCP server reply,
 * IPv6 or an unknown EtherType are dropped. Idempotent.
 */
export async function applyPortFirewall(options: PortFirewallOptions): Promise<PortFirewallNames> {
  assertInterfaceName(options.tapName);
  const mac = normalizeMac(options.mac);
  assertIpv4(options.ip, 'port address');
  for (const source of options.allowIngressFrom) assertIpv4(source, 'group member address');
  const ingressLines = options.ingressRules.map(ruleToIptables);
  const names = portFirewallNames(options.tapName);
  const inHost: CommandOptions = { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs };

  // Bridged IPv4 must traverse iptables for the stateful part (per namespace, HOST-FACTS).
  await setSysctl('net.bridge.bridge-nf-call-iptables', '1', inHost);

  const chain = names.ingressChain;
  const restore = [
    '*filter',
    // Declaring a chain in --noflush mode creates it or empties it, within the same commit.
    `:${chain} - [0:0]`,
    `-A ${chain} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
    `-A ${chain} -m conntrack --ctstate INVALID -j DROP`,
    // DHCP replies are not tracked as replies: the request went to the broadcast address.
    `-A ${chain} -p udp --sport 67 --dport 68 -j ACCEPT`,
    ...options.allowIngressFrom.map((source) => `-A ${chain} -s ${source}/32 -j ACCEPT`),
    ...ingressLines.map((line) => `-A ${chain} ${line} -j ACCEPT`),
    `-A ${chain} -j DROP`,
    'COMMIT',
    '',
  ].join('\n');
  await runCommand('iptables-restore', ['--noflush'], { ...inHost, input: restore });
  const jump = ['FORWARD', '-m', 'physdev', '--physdev-out', options.tapName, '--physdev-is-bridged', '-j', chain];
  const present = await runCommand('iptables', ['-C', ...jump], { ...inHost, allowFailure: true });
  if (present.exitCode !== 0) await runCommand('iptables', ['-I', ...jump], inHost);
  await applyEgress(options, names.egressChain, inHost);

  const table = `bridge ${ANTI_SPOOF_TABLE}`;
  const portChain = names.antiSpoofChain;
  const tap = JSON.stringify(options.tapName);
  const script = [
    `add table ${table}`,
    `add map ${table} ports { type ifname : verdict; }`,
    `add chain ${table} prerouting { type filter hook prerouting priority -200; policy accept; }`,
    `flush chain ${table} prerouting`,
    `add rule ${table} prerouting iifname vmap @ports`,
    `add chain ${table} ${portChain}`,
    `flush chain ${table} ${portChain}`,
    `add rule ${table} ${portChain} ether saddr != ${mac} drop`,
    `add rule ${table} ${portChain} ether type arp arp saddr ether != ${mac} drop`,
    // 0.0.0.0 is the sender of an ARP probe (RFC 5227 address conflict detection).
    `add rule ${table} ${portChain} ether type arp arp saddr ip != { ${options.ip}, 0.0.0.0 } drop`,
    `add rule ${table} ${portChain} ether type arp accept`,
    // QEMU announces a migrated guest with RARP frames from the guest's MAC.
    `add rule ${table} ${portChain} ether type 0x8035 accept`,
    // A VM must not answer DHCP for others.
    `add rule ${table} ${portChain} ether type ip udp sport 67 drop`,
    `add rule ${table} ${portChain} ether type ip ip saddr ${options.ip} accept`,
    `add rule ${table} ${portChain} ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept`,
    `add rule ${table} ${portChain} drop`,
    `add element ${table} ports { ${tap} : jump ${portChain} }`,
    '',
  ].join('\n');
  // The prerouting rule is rewritten each time so the table's shape is always exactly this.
  await runCommand('nft', ['-f', '-'], { ...inHost, input: script });
  return names;
}

/**
 * The egress chain of a port: with rules, new connections from the VM are allowed only by them;
 * without, the chain and its jump are removed and egress is open.
 */
async function applyEgress(options: PortFirewallOptions, chain: string, inHost: CommandOptions): Promise<void> {
  const jump = ['FORWARD', '-m', 'physdev', '--physdev-in', options.tapName, '--physdev-is-bridged', '-j', chain];
  if (options.egressRules === undefined) {
    await removeChain(jump, chain, inHost);
    return;
  }
  const lines = options.egressRules.map((rule) =>
    ruleToIptables({ protocol: rule.protocol, portMin: rule.portMin, portMax: rule.portMax, sourceCidr: rule.destinationCidr }).replace(/^-s /, '-d '),
  );
  const restore = [
    '*filter',
    `:${chain} - [0:0]`,
    `-A ${chain} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
    `-A ${chain} -m conntrack --ctstate INVALID -j DROP`,
    // The VM's own DHCP requests, or it could not renew its address.
    `-A ${chain} -p udp --sport 68 --dport 67 -j ACCEPT`,
    ...lines.map((line) => `-A ${chain} ${line} -j ACCEPT`),
    `-A ${chain} -j DROP`,
    'COMMIT',
    '',
  ].join('\n');
  await runCommand('iptables-restore', ['--noflush'], { ...inHost, input: restore });
  const present = await runCommand('iptables', ['-C', ...jump], { ...inHost, allowFailure: true });
  if (present.exitCode !== 0) await runCommand('iptables', ['-I', ...jump], inHost);
}

/** Removes every copy of `jump` and then `chain`. Missing is not an error. */
async function removeChain(jump: string[], chain: string, inHost: CommandOptions): Promise<void> {
  while ((await runCommand('iptables', ['-C', ...jump], { ...inHost, allowFailure: true })).exitCode === 0) {
    await runCommand('iptables', ['-D', ...jump], inHost);
  }
  if ((await runCommand('iptables', ['-L', chain, '-n'], { ...inHost, allowFailure: true })).exitCode === 0) {
    await runCommand('iptables', ['-F', chain], inHost);
    await runCommand('iptables', ['-X', chain], inHost);
  }
}

/** Takes a port's firewall away (anti-spoofing and security groups). Missing is not an error. */
export async function removePortFirewall(options: { hostNs: string; tapName: string } & CallOptions): Promise<void> {
  assertInterfaceName(options.tapName);
  const names = portFirewallNames(options.tapName);
  const inHost: CommandOptions = { netns: options.hostNs, signal: options.signal, timeoutMs: options.timeoutMs };
  await removeChain(
    ['FORWARD', '-m', 'physdev', '--physdev-out', options.tapName, '--physdev-is-bridged', '-j', names.ingressChain],
    names.ingressChain,
    inHost,
  );
  await removeChain(['FORWARD', '-m', 'physdev', '--physdev-in', options.tapName, '--physdev-is-bridged', '-j', names.egressChain], names.egressChain, inHost);
  const table = `bridge ${ANTI_SPOOF_TABLE}`;
  const listed = await runCommand('nft', ['list', 'chain', 'bridge', ANTI_SPOOF_TABLE, names.antiSpoofChain], { ...inHost, allowFailure: true });
  const element = await runCommand('nft', ['get', 'element', 'bridge', ANTI_SPOOF_TABLE, 'ports', `{ ${JSON.stringify(options.tapName)} }`], {
    ...inHost,
    allowFailure: true,
  });
  const script = [
    element.exitCode === 0 ? `delete element ${table} ports { ${JSON.stringify(options.tapName)} }` : '',
    listed.exitCode === 0 ? `delete chain ${table} ${names.antiSpoofChain}` : '',
    '',
  ].join('\n');
  if (script.trim() !== '') await runCommand('nft', ['-f', '-'], { ...inHost, input: script });
}

/** The iptables match of one ingress rule (without the jump). Pure; throws on bad input. */
export function ruleToIptables(rule: IngressRule): string {
  const source = parseIpv4Cidr(rule.sourceCidr, 'rule source');
  const parts = [`-s ${source.network}/${source.prefixLength}`];
  const hasPorts = rule.portMin !== undefined || rule.portMax !== undefined;
  switch (rule.protocol) {
    case 'tcp':
    case 'udp': {
      parts.push(`-p ${rule.protocol}`);
      if (hasPorts) {
        const min = rule.portMin ?? rule.portMax!;
        const max = rule.portMax ?? min;
        if (!isPort(min) || !isPort(max) || min > max) {
          throw new NubisError('NET_INVALID_RULE', `Port range ${rule.portMin}-${rule.portMax} is not valid: use 1-65535 with min <= max`, {
            details: { rule },
          });
        }
        parts.push(`--dport ${min === max ? min : `${min}:${max}`}`);
      }
      break;
    }
    case 'icmp':
    case 'any':
      if (hasPorts) {
        throw new NubisError('NET_INVALID_RULE', `A ${rule.protocol} rule cannot have ports`, { details: { rule } });
      }
      if (rule.protocol === 'icmp') parts.push('-p icmp');
      break;
    default:
      throw new NubisError('NET_INVALID_RULE', `Protocol ${JSON.stringify((rule as IngressRule).protocol)} is not tcp, udp, icmp or any`, {
        details: { rule },
      });
  }
  return parts.join(' ');
}

function isPort(value: number): boolean {
  return Number.isInteger(value) && value >= 1 && value <= 65535;
}
