/**
 * Where a destination listens for a migration stream (and for its disks' mirror): its underlay
 * address and a fresh port, taken in turn from a range below the ephemeral ports the kernel hands
 * out by default (32768-60999, net.ipv4.ip_local_port_range): a port there can be the local end
 * of any outgoing connection, and QEMU's listen on it then fails with "Address already in use"
 * (seen when the destination's address is 127.0.0.1, shared with everything on the machine).
 */
import type { HostsTable } from '../state/schema.ts';

/** The migration ports: each migration takes the next, wrapping round at the end. */
const MIGRATION_PORT_BASE = 21000;
const MIGRATION_PORT_LAST = 29999;
let nextPort = MIGRATION_PORT_BASE + Math.floor(Math.random() * 1000);

/** A fresh `tcp:ADDRESS:PORT` on the destination's underlay address. */
export function nextListenUri(destination: Pick<HostsTable, 'underlay_ip'>): string {
  const port = nextPort;
  nextPort = nextPort >= MIGRATION_PORT_LAST ? MIGRATION_PORT_BASE : nextPort + 1;
  return `tcp:${destination.underlay_ip ?? '127.0.0.1'}:${port}`;
}
