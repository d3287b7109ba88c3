// IPv4 and MAC address helpers for the driver's input checks. Pure functions, no host access.
import { NubisError } from '../core/errors.ts';

/** An IPv4 interface address such as `10.0.0.5/24`, split into its parts. */
export interface Ipv4Cidr {
  /** The address as written, e.g. `10.0.0.5`. */
  address: string;
  prefixLength: number;
  /** The network address, e.g. `10.0.0.0`. */
  network: string;
  /** The dotted netmask, e.g. `255.255.255.0`. */
  netmask: string;
}

/** The 32-bit value of a dotted IPv4 address, or undefined when `text` is not one. */
export function ipv4ToNumber(text: string): number | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let value = 0;
  for (const part of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part)) return undefined;
    const octet = Number(part);
    if (octet > 255) return undefined;
    value = value * 256 + octet;
  }
  return value;
}

/** The dotted form of a 32-bit IPv4 value. */
export function numberToIpv4(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join('.');
}

/** Throws `NET_INVALID_ADDRESS` unless `text` is a dotted IPv4 address; returns it. */
export function assertIpv4(text: string, what = 'address'): string {
  if (ipv4ToNumber(text) === undefined) {
    throw new NubisError('NET_INVALID_ADDRESS', `The ${what} ${JSON.stringify(text)} is not an IPv4 address such as 10.0.0.5`, {
      details: { value: text },
    });
  }
  return text;
}

/** Parses `10.0.0.5/24`; throws `NET_INVALID_ADDRESS` for anything else. */
export function parseIpv4Cidr(text: string, what = 'address'): Ipv4Cidr {
  const match = /^([0-9.]+)\/([0-9]{1,2})$/.exec(text);
  const value = match ? ipv4ToNumber(match[1]) : undefined;
  const prefixLength = match ? Number(match[2]) : NaN;
  if (!match || value === undefined || prefixLength > 32) {
    throw new NubisError('NET_INVALID_ADDRESS', `The ${what} ${JSON.stringify(text)} is not an IPv4 address with prefix length such as 10.0.0.5/24`, {
      details: { value: text },
    });
  }
  const mask = prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0;
  return {
    address: match[1],
    prefixLength,
    network: numberToIpv4((value & mask) >>> 0),
    netmask: numberToIpv4(mask),
  };
}

/** True when `address` lies inside the network of `cidr`. */
export function cidrContains(cidr: string, address: string): boolean {
  const parsed = parseIpv4Cidr(cidr);
  const value = ipv4ToNumber(address);
  if (value === undefined) return false;
  const mask = ipv4ToNumber(parsed.netmask)!;
  return (value & mask) >>> 0 === ipv4ToNumber(parsed.network);
}

/** Normalises a MAC address to lower case with colons; throws `NET_INVALID_MAC` when it is not one. */
export function normalizeMac(text: string): string {
  const hex = text.toLowerCase();
  if (!/^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$/.test(hex)) {
    throw new NubisError('NET_INVALID_MAC', `MAC address ${JSON.stringify(text)} is not of the form 52:54:00:12:34:56`, {
      details: { value: text },
    });
  }
  return hex.replaceAll('-', ':');
}
