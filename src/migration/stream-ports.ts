/**
 * Where a destination listens for a migration stream: its underlay address and a fresh port,
 * taken in turn from a range above the ephemeral ports the kernel hands out by default.
 */
import type { HostsTable } from '../state/schema.ts';

/** The first migration port tried on the destination; each migration takes the next free one. */
const MIGRATION_PORT_BASE = 49152;
let nextPort = MIGRATION_PORT_BASE + Math.floor(Math.random() * 1000);

/** A fresh `tcp:ADDRESS:PORT` on the destination's underlay address. */
export function nextListenUri(destination: Pick<HostsTable, 'underlay_ip'>): string {
  const port = nextPort;
  nextPort = nextPort >= 60999 ? MIGRATION_PORT_BASE : nextPort + 1;
  return `tcp:${destination.underlay_ip ?? '127.0.0.1'}:${port}`;
}
