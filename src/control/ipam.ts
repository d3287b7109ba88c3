/**
 * IPv4 address management for virtual networks: parsing and checking subnets, and handing out
 * addresses. Pure functions over numbers; the database keeps who holds which address.
 */
import { NubisError } from '../core/errors.ts';
import { ipv4ToNumber, numberToIpv4 } from '../network/addresses.ts';

export interface Subnet {
  /** Network address as a 32-bit unsigned number. */
  network: number;
  prefixLength: number;
  /** `10.0.0.0/24`, normalised. */
  cidr: string;
}

/** Dotted IPv4 text to its 32-bit value (undefined when malformed); the network driver's parser. */
export const parseIpv4 = ipv4ToNumber;
/** A 32-bit value to dotted IPv4 text. */
export const formatIpv4 = numberToIpv4;

function maskOf(prefixLength: number): number {
  return prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0;
}

/**
 * Parses `a.b.c.d/n`. Refuses malformed input, host bits set (`10.0.0.5/24`), and prefixes
 * outside /8 to /29 (a virtual network needs room for a gateway, a DHCP server and VMs).
 */
export function parseSubnet(cidr: string): Subnet {
  const match = /^([\d.]+)\/(\d{1,2})$/.exec(cidr.trim());
  const address = match ? parseIpv4(match[1]) : undefined;
  const prefixLength = match ? Number(match[2]) : NaN;
  if (address === undefined || !(prefixLength >= 0 && prefixLength <= 32)) {
    throw new NubisError('NET_INVALID_SUBNET', `${cidr} is not an IPv4 subnet; write it like 10.0.0.0/24`);
  }
  if (prefixLength < 8 || prefixLength > 29) {
    throw new NubisError('NET_INVALID_SUBNET', `Subnet ${cidr} has prefix /${prefixLength}; use a prefix from /8 to /29`);
  }
  const network = (address & maskOf(prefixLength)) >>> 0;
  if (network !== address) {
    throw new NubisError('NET_INVALID_SUBNET', `${cidr} has host bits set; the subnet is ${formatIpv4(network)}/${prefixLength}`);
  }
  return { network, prefixLength, cidr: `${formatIpv4(network)}/${prefixLength}` };
}

export function subnetSize(subnet: Subnet): number {
  return 2 ** (32 - subnet.prefixLength);
}

/** True when `address` is a usable host address of `subnet` (not the network or broadcast address). */
export function isHostAddress(subnet: Subnet, address: number): boolean {
  return address > subnet.network && address < subnet.network + subnetSize(subnet) - 1;
}

export function subnetsOverlap(a: Subnet, b: Subnet): boolean {
  const aEnd = a.network + subnetSize(a);
  const bEnd = b.network + subnetSize(b);
  return a.network < bEnd && b.network < aEnd;
}

/** Checks a requested address against the subnet; returns it as a number. */
export function checkAddress(subnet: Subnet, text: string): number {
  const address = parseIpv4(text);
  if (address === undefined) throw new NubisError('NET_INVALID_ADDRESS', `${text} is not an IPv4 address`);
  if (!isHostAddress(subnet, address)) {
    throw new NubisError('NET_INVALID_ADDRESS', `${text} is not a usable address of subnet ${subnet.cidr} (outside it, or its network or broadcast address)`);
  }
  return address;
}

/** The lowest free host address of the subnet, or `NET_SUBNET_FULL`. */
export function firstFreeAddress(subnet: Subnet, taken: ReadonlySet<number>): number {
  for (let address = subnet.network + 1; address < subnet.network + subnetSize(subnet) - 1; address++) {
    if (!taken.has(address)) return address;
  }
  throw new NubisError('NET_SUBNET_FULL', `Subnet ${subnet.cidr} has no free address left; delete NICs or use a larger subnet`);
}

/** Parses any IPv4 CIDR (/0 to /32, host bits allowed to be zero only), e.g. a firewall source. */
export function parseCidr(cidr: string): string {
  const match = /^([\d.]+)\/(\d{1,2})$/.exec(cidr.trim());
  const address = match ? parseIpv4(match[1]) : undefined;
  const prefixLength = match ? Number(match[2]) : NaN;
  if (address === undefined || !(prefixLength >= 0 && prefixLength <= 32)) {
    throw new NubisError('NET_INVALID_CIDR', `${cidr} is not an IPv4 CIDR; write it like 0.0.0.0/0 or 10.0.0.0/24`);
  }
  const network = (address & maskOf(prefixLength)) >>> 0;
  if (network !== address) throw new NubisError('NET_INVALID_CIDR', `${cidr} has host bits set; write ${formatIpv4(network)}/${prefixLength}`);
  return `${formatIpv4(network)}/${prefixLength}`;
}
