/**
 * The watchdog of a host: a small process of its own, apart from the agent, so that it outlives
 * an agent crash. It kills the host's HA VMs (SIGKILL: the guest writes nothing more) when the
 * host can no longer be trusted to be the only one running them, as Proxmox's watchdog does by
 * resetting the node:
 * - the agent stopped feeding it for WATCHDOG_TIMEOUT_MS (the agent died or hangs), or
 * - the host lost the control plane AND most of its peer hosts for WATCHDOG_TIMEOUT_MS (it is
 *   cut off: the control plane will fence it and restart its HA VMs elsewhere).
 * The control plane alone being gone stops nothing: peers still answer, so VMs run on.
 *
 * It reads what the agent tells it from files in the host folder (watchdog.json: the control
 * plane's address and the peers; watchdog.feed: touched every second), and answers peers' probes
 * on the host's underlay address. Times: src/agent-api/heartbeat.ts.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { connect, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { WATCHDOG_PORT, WATCHDOG_PROBE_INTERVAL_MS, WATCHDOG_TIMEOUT_MS, type WatchdogConfig } from '../agent-api/heartbeat.ts';
import { runningQemuPid } from '../compute/qemu/qemu-process.ts';
import { messageOf } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import type { VmRecord } from './vm-record-file.ts';

export const WATCHDOG_CONFIG_FILE = 'watchdog.json';
export const WATCHDOG_FEED_FILE = 'watchdog.feed';
/** Written when the watchdog fires: when, why, and which VMs it killed. */
export const WATCHDOG_FIRED_FILE = 'watchdog-fired.json';

export interface WatchdogOptions {
  hostDir: string;
  /** This host's underlay address: the watchdog answers peers' probes there. */
  underlayIp?: string;
  logger: Logger;
  timeoutMs?: number;
}

/** Whether `target` accepts a connection within `timeoutMs`. */
function reachable(target: { host: string; port: number } | { path: string }, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = 'path' in target ? connect(target.path) : connect({ host: target.host, port: target.port });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** What one round of probes found; pure, so the firing rule is tested without a network. */
export interface WatchdogView {
  now: number;
  /** When the agent last fed the watchdog, or undefined before it ever did. */
  fedAt?: number;
  lastControlAt: number;
  lastQuorumAt: number;
  peerCount: number;
  timeoutMs: number;
}

/** Why the watchdog must fire now, or undefined. */
export function firingReason(view: WatchdogView): string | undefined {
  if (view.fedAt !== undefined && view.now - view.fedAt > view.timeoutMs) return `the agent has not fed the watchdog for ${view.now - view.fedAt} ms`;
  const isolated = view.now - view.lastControlAt > view.timeoutMs && view.now - view.lastQuorumAt > view.timeoutMs;
  // A lone host has nowhere else its VMs could run: it never fences itself.
  if (isolated && view.peerCount > 0)
    return `the control plane and most peer hosts have not answered for ${view.now - Math.max(view.lastControlAt, view.lastQuorumAt)} ms`;
  return undefined;
}

export class Watchdog {
  readonly #options: WatchdogOptions;
  readonly #timeoutMs: number;
  #lastControlAt = Date.now();
  #lastQuorumAt = Date.now();
  #timer: NodeJS.Timeout | undefined;
  #server: Server | undefined;
  #round: Promise<void> = Promise.resolve();

  constructor(options: WatchdogOptions) {
    this.#options = options;
    this.#timeoutMs = options.timeoutMs ?? WATCHDOG_TIMEOUT_MS;
  }

  async start(): Promise<void> {
    if (this.#options.underlayIp) {
      const server = createServer((socket) => socket.end());
      await new Promise<void>((resolve, reject) => server.listen(WATCHDOG_PORT, this.#options.underlayIp, resolve).once('error', reject));
      this.#server = server;
    }
    this.#timer = setInterval(() => {
      this.#round = this.#round.then(() => this.#check()).catch((error: unknown) => this.#options.logger.error(`watchdog round failed: ${messageOf(error)}`));
    }, WATCHDOG_PROBE_INTERVAL_MS);
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#round;
    await new Promise<void>((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()));
  }

  #config(): WatchdogConfig | undefined {
    const path = join(this.#options.hostDir, WATCHDOG_CONFIG_FILE);
    return existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as WatchdogConfig) : undefined;
  }

  async #check(): Promise<void> {
    const config = this.#config();
    if (!config) return; // Not armed: the agent has not joined a control plane yet.
    const [control, ...peers] = await Promise.all([
      reachable(config.control, WATCHDOG_PROBE_INTERVAL_MS),
      ...config.peers.map((peer) => reachable({ host: peer.address, port: WATCHDOG_PORT }, WATCHDOG_PROBE_INTERVAL_MS)),
    ]);
    const now = Date.now();
    if (control) this.#lastControlAt = now;
    // This host and the peers it reaches are a majority of the cluster.
    if ((peers.filter(Boolean).length + 1) * 2 > config.peers.length + 1) this.#lastQuorumAt = now;
    const feed = join(this.#options.hostDir, WATCHDOG_FEED_FILE);
    const reason = firingReason({
      now,
      ...(existsSync(feed) ? { fedAt: statSync(feed).mtimeMs } : {}),
      lastControlAt: this.#lastControlAt,
      lastQuorumAt: this.#lastQuorumAt,
      peerCount: config.peers.length,
      timeoutMs: this.#timeoutMs,
    });
    if (reason) await this.#fire(reason, new Set(config.ha));
  }

  /** Kills every running HA VM of the host and writes down what it did. */
  async #fire(reason: string, ha: ReadonlySet<string>): Promise<void> {
    const vmsDir = join(this.#options.hostDir, 'vms');
    const killed: string[] = [];
    for (const entry of existsSync(vmsDir) ? readdirSync(vmsDir) : []) {
      const dir = join(vmsDir, entry);
      let record: VmRecord;
      try {
        record = JSON.parse(readFileSync(join(dir, 'vm.json'), 'utf8')) as VmRecord;
      } catch {
        continue;
      }
      if (!ha.has(record.spec.id)) continue;
      const pid = runningQemuPid(dir);
      if (pid === undefined) continue;
      process.kill(pid, 'SIGKILL');
      killed.push(record.spec.name);
    }
    if (killed.length === 0) return;
    this.#options.logger.warn({ killed }, `watchdog fired: ${reason}; killed the HA VMs of this host`);
    await writeFile(join(this.#options.hostDir, WATCHDOG_FIRED_FILE), `${JSON.stringify({ at: new Date().toISOString(), reason, killed }, null, 2)}\n`);
  }
}
