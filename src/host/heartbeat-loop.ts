/**
 * The agent's side of high availability: a heartbeat to the control plane every second (the
 * control plane fences a host that stays silent), feeding the host's watchdog (which kills the
 * HA VMs when the agent stops feeding it), and telling the watchdog whom to probe. A fenced host
 * coming back kills its stale VMs (those the control plane restarted elsewhere) before anything
 * else: they must never run twice.
 */
import { utimes, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { HEARTBEAT_INTERVAL_MS, type HeartbeatAnswer, type WatchdogConfig } from '../agent-api/heartbeat.ts';
import { messageOf } from '../core/errors.ts';
import { requestJson } from '../core/http-json.ts';
import type { Logger } from '../core/logger.ts';
import type { VmSupervisor } from './vm-supervisor.ts';
import { WATCHDOG_CONFIG_FILE, WATCHDOG_FEED_FILE } from './watchdog.ts';

export interface HeartbeatLoopOptions {
  name: string;
  hostDir: string;
  controlUrl: string;
  agentToken: () => string;
  /** True once the agent has joined (heartbeats before that are refused). */
  joined: () => boolean;
  supervisor: VmSupervisor;
  logger: Logger;
  signal: AbortSignal;
}

/** The control plane's address as the watchdog probes it. */
export function controlTarget(controlUrl: string): WatchdogConfig['control'] {
  if (controlUrl.startsWith('unix:')) return { path: controlUrl.slice('unix:'.length) };
  const url = new URL(controlUrl);
  return { host: url.hostname, port: Number(url.port || (url.protocol === 'https:' ? 443 : 80)) };
}

/** Touches the watchdog's feed file every second until `signal` aborts: the agent lives. */
export async function feedWatchdog(hostDir: string, signal: AbortSignal, logger: Logger): Promise<void> {
  const feed = join(hostDir, WATCHDOG_FEED_FILE);
  while (!signal.aborted) {
    const now = new Date();
    await utimes(feed, now, now).catch(async () => writeFile(feed, '').catch((error: unknown) => logger.warn(`cannot feed the watchdog: ${messageOf(error)}`)));
    await delay(HEARTBEAT_INTERVAL_MS, undefined, { signal }).catch(() => undefined);
  }
}

/** Sends heartbeats until `signal` aborts; acts on what the control plane answers. */
export async function heartbeatLoop(options: HeartbeatLoopOptions): Promise<void> {
  let lastConfig = '';
  while (!options.signal.aborted) {
    if (options.joined()) {
      try {
        const answer = await requestJson<HeartbeatAnswer>(options.controlUrl, {
          method: 'POST',
          path: `/v1/hosts/${options.name}/heartbeat`,
          token: options.agentToken(),
          body: { vms: options.supervisor.list().map((vm) => vm.id) },
          timeoutMs: 2_000,
        });
        for (const id of answer.stale) {
          options.logger.warn({ vm: id }, 'this host was fenced and the VM now runs elsewhere: killing the stale copy');
          await options.supervisor.delete(id, { gracefulTimeoutMs: 0 });
        }
        const config = JSON.stringify({ control: controlTarget(options.controlUrl), peers: answer.peers, ha: answer.ha } satisfies WatchdogConfig);
        if (config !== lastConfig) {
          await writeAtomically(join(options.hostDir, WATCHDOG_CONFIG_FILE), config);
          lastConfig = config;
        }
      } catch (error) {
        if (!options.signal.aborted) options.logger.debug(`heartbeat failed: ${messageOf(error)}`);
      }
    }
    await delay(HEARTBEAT_INTERVAL_MS, undefined, { signal: options.signal }).catch(() => undefined);
  }
}

async function writeAtomically(path: string, text: string): Promise<void> {
  await writeFile(`${path}.tmp`, `${text}\n`, { mode: 0o600 });
  await rename(`${path}.tmp`, path);
}
