/**
 * The heartbeat between a host agent and the control plane, and the times that high availability
 * rests on. Both sides import these, so the control plane never fences a host before that host's
 * watchdog has stopped its HA VMs.
 *
 * The order of events when a host is cut off at time C (its link, its agent, or the whole host):
 * - its agent's last heartbeat reached the control plane at C - HEARTBEAT_INTERVAL_MS at worst;
 * - its watchdog fires by C + WATCHDOG_TIMEOUT_MS + WATCHDOG_PROBE_INTERVAL_MS * 2 and kills
 *   the host's HA VMs (it alone decides: it needs neither the agent nor the control plane);
 * - the control plane fences the host FENCE_AFTER_MS after its last heartbeat, at C + 11 s at the
 *   earliest: after the watchdog, with a margin. Fencing cuts the host's storage I/O and overlay
 *   first; only then are its HA VMs restarted elsewhere.
 */
import { type Static, Type } from '@sinclair/typebox';

/** How often an agent tells the control plane it lives. */
export const HEARTBEAT_INTERVAL_MS = 1_000;
/** A host silent this long is shown `suspect` (nothing is done yet). */
export const SUSPECT_AFTER_MS = 3_000;
/** A watchdog that lost its agent, or both the control plane and most peers, this long fires. */
export const WATCHDOG_TIMEOUT_MS = 8_000;
/** How often the watchdog probes the control plane and its peers (a probe waits this long at most). */
export const WATCHDOG_PROBE_INTERVAL_MS = 500;
/** A host silent this long is fenced and its HA VMs restarted elsewhere. */
export const FENCE_AFTER_MS = WATCHDOG_TIMEOUT_MS + 2 * WATCHDOG_PROBE_INTERVAL_MS + HEARTBEAT_INTERVAL_MS + 2_000;
/** The TCP port a watchdog answers peers' probes on, on its host's underlay address. */
export const WATCHDOG_PORT = 7902;
/** The TCP port an agent serves its API on, on its host's underlay address. */
export const AGENT_UNDERLAY_PORT = 7901;

export const HeartbeatRequest = Type.Object(
  {
    /** The VMs this agent has (running or not), by id: a fenced host learns which are stale. */
    vms: Type.Array(Type.String({ pattern: '^[a-z0-9][a-z0-9-]{0,62}$', maxLength: 63 }), { maxItems: 10_000 }),
  },
  { additionalProperties: false },
);
export type HeartbeatRequest = Static<typeof HeartbeatRequest>;

export const HeartbeatAnswer = Type.Object({
  /** The control plane fenced this host: it must kill `stale` before anything else. */
  fenced: Type.Boolean(),
  /** VMs this host has that now live elsewhere (restarted by HA): kill and forget them at once. */
  stale: Type.Array(Type.String({ maxLength: 63 }), { maxItems: 10_000 }),
  /** This host's HA VMs: the ones its watchdog kills when the host is cut off. */
  ha: Type.Array(Type.String({ maxLength: 63 }), { maxItems: 10_000 }),
  /** The other hosts in service, whose watchdogs this host's watchdog probes. */
  peers: Type.Array(Type.Object({ name: Type.String({ maxLength: 63 }), address: Type.String({ maxLength: 15 }) }), { maxItems: 10_000 }),
});
export type HeartbeatAnswer = Static<typeof HeartbeatAnswer>;

/** What the agent hands its host's watchdog (`<hostDir>/watchdog.json`). */
export interface WatchdogConfig {
  /** The control plane's address as the agent reaches it: TCP, or a unix socket (never isolated). */
  control: { host: string; port: number } | { path: string };
  peers: Array<{ name: string; address: string }>;
  /** The ids of this host's HA VMs. */
  ha: string[];
}
