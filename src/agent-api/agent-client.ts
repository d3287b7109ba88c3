/**
 * The agent API over HTTP (a unix socket or TCP): the one way the control plane calls an agent.
 * Each method names its route in {@link AGENT_ROUTES}; paths are built from the route's URL with
 * every parameter escaped, never written by hand. An agent that does not answer is
 * `HOST_UNAVAILABLE`; the agent's own errors keep their code (the one error contract).
 */
import WebSocket from 'ws';
import { NubisError } from '../core/errors.ts';
import { parseEndpoint, requestJson } from '../core/http-json.ts';
import { AGENT_ROUTES, AGENT_STREAMS, type AgentClient, type AgentRouteName, type AgentStream, type CallOptions, VNC_PASSWORD_HEADER } from './contract.ts';
import type { VmMemoryReport } from '../compute/memory-spec.ts';

/** The URL of `route` with its `:name` parameters filled in, each escaped. */
export function agentPath(name: AgentRouteName, params: Record<string, string>, query?: Record<string, string | number>): string {
  const path = AGENT_ROUTES[name].url.replace(/:([a-z]+)/g, (_, key: string) => {
    const value = params[key];
    if (value === undefined) throw new Error(`Agent route ${name} needs ${key}`);
    return encodeURIComponent(value);
  });
  const search = query ? `?${new URLSearchParams(Object.entries(query).map(([key, value]) => [key, String(value)]))}` : '';
  return `${path}${search}`;
}

export class HttpAgentClient implements AgentClient {
  readonly #endpoint: string;
  readonly #token: string;
  readonly #hostName: string;

  /** `endpoint`: `unix:/path/agent.sock` or `http://host:port`; `token`: what this agent takes from the control plane. */
  constructor(options: { endpoint: string; token: string; hostName: string }) {
    this.#endpoint = options.endpoint;
    this.#token = options.token;
    this.#hostName = options.hostName;
  }

  async #call<T>(
    name: AgentRouteName,
    params: Record<string, string>,
    body?: unknown,
    options: CallOptions & { query?: Record<string, string | number> } = {},
  ): Promise<T> {
    try {
      return await requestJson<T>(this.#endpoint, {
        method: AGENT_ROUTES[name].method,
        path: agentPath(name, params, options.query),
        ...(body === undefined ? {} : { body }),
        token: this.#token,
        ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
      });
    } catch (error) {
      if ((error as { code?: string }).code === 'HTTP_UNREACHABLE') {
        throw new NubisError('HOST_UNAVAILABLE', `The agent of host ${this.#hostName} does not answer (${(error as Error).message}); is it running?`, {
          cause: error,
        });
      }
      throw error;
    }
  }

  info: AgentClient['info'] = () => this.#call('info', {});
  listVms: AgentClient['listVms'] = () => this.#call('listVms', {});
  createVm: AgentClient['createVm'] = (spec, options) => this.#call('createVm', { id: spec.id }, spec, options);
  vmStatus: AgentClient['vmStatus'] = (id, options) => this.#call('vmStatus', { id }, undefined, options);
  startVm: AgentClient['startVm'] = (id, options) => this.#call('startVm', { id }, undefined, options);
  stopVm: AgentClient['stopVm'] = (id, request, options) => this.#call('stopVm', { id }, request, options);
  rebootVm: AgentClient['rebootVm'] = (id, request, options) => this.#call('rebootVm', { id }, request, options);
  pauseVm: AgentClient['pauseVm'] = (id, options) => this.#call('pauseVm', { id }, undefined, options);
  resumeVm: AgentClient['resumeVm'] = (id, options) => this.#call('resumeVm', { id }, undefined, options);
  waitReady: AgentClient['waitReady'] = (id, timeoutMs, options) => this.#call('waitReady', { id }, { timeoutMs }, options);
  deleteVm: AgentClient['deleteVm'] = (id, options) => this.#call('deleteVm', { id }, undefined, options);
  consoleLog: AgentClient['consoleLog'] = async (id, lines) =>
    (await this.#call<{ lines: string[] }>('consoleLog', { id }, undefined, { query: { lines } })).lines;
  openStream: AgentClient['openStream'] = (kind, id, options = {}) => {
    const { socketPath, host, port } = parseEndpoint(this.#endpoint);
    const path = AGENT_STREAMS[kind].url.replace(':id', encodeURIComponent(id));
    const url = socketPath ? `ws+unix://${socketPath}:${path}` : `ws://${host}:${port}${path}`;
    const headers: Record<string, string> = { authorization: `Bearer ${this.#token}` };
    if (options.vncPassword) headers[VNC_PASSWORD_HEADER] = options.vncPassword;
    return webSocketStream(new WebSocket(url, { headers }));
  };
  attachDisk: AgentClient['attachDisk'] = (id, disk, options) => this.#call('attachDisk', { id }, disk, options);
  detachDisk: AgentClient['detachDisk'] = (id, diskId, options) => this.#call('detachDisk', { id, disk: diskId }, undefined, options);
  takeSnapshot: AgentClient['takeSnapshot'] = (id, snapshot, withMemory, options) => this.#call('takeSnapshot', { id, snapshot }, { withMemory }, options);
  rollbackSnapshot: AgentClient['rollbackSnapshot'] = (id, snapshot, body, options) => this.#call('rollbackSnapshot', { id, snapshot }, body, options);
  takeBackup: AgentClient['takeBackup'] = (id, backup, request, options) => this.#call('takeBackup', { id, backup }, request, options);
  pullRestoredDisks: AgentClient['pullRestoredDisks'] = (id, options) => this.#call('pullRestoredDisks', { id }, undefined, options);
  deleteSnapshot: AgentClient['deleteSnapshot'] = (id, snapshot, options) => this.#call('deleteSnapshot', { id, snapshot }, undefined, options);
  sealTemplate: AgentClient['sealTemplate'] = (id, options) => this.#call('sealTemplate', { id }, undefined, options);
  setCpuControls: AgentClient['setCpuControls'] = (id, controls, options) => this.#call('setCpuControls', { id }, controls, options);
  setDiskLimits: AgentClient['setDiskLimits'] = (id, disk, limits, options) => this.#call('setDiskLimits', { id, disk }, limits, options);
  setNicBandwidth: AgentClient['setNicBandwidth'] = (id, nic, bandwidth, options) => this.#call('setNicBandwidth', { id, nic }, bandwidth, options);
  setMemory: AgentClient['setMemory'] = (id, settings, options) => this.#call('setMemory', { id }, settings, options);
  setCpus: AgentClient['setCpus'] = (id, settings, options) => this.#call('setCpus', { id }, settings, options);
  memoryReport: AgentClient['memoryReport'] = async (id) => (await this.#call<{ report?: VmMemoryReport }>('memoryReport', { id })).report;
  setFirewall: AgentClient['setFirewall'] = (id, firewalls) => this.#call('setFirewall', { id }, firewalls);
  prepareIncoming: AgentClient['prepareIncoming'] = (id, request, options) => this.#call('prepareIncoming', { id }, request, options);
  activateIncoming: AgentClient['activateIncoming'] = (id, options) => this.#call('activateIncoming', { id }, undefined, options);
  recoverIncoming: AgentClient['recoverIncoming'] = (id, uri, options) => this.#call('recoverIncoming', { id }, { uri }, options);
  startMirrors: AgentClient['startMirrors'] = (id, request, options) => this.#call('startMirrors', { id }, request, options);
  mirrors: AgentClient['mirrors'] = (id, options) => this.#call('mirrors', { id }, undefined, options);
  abortMirrors: AgentClient['abortMirrors'] = (id) => this.#call('abortMirrors', { id });
  migrate: AgentClient['migrate'] = (id, request, options) => this.#call('migrate', { id }, request, options);
  migrationStatus: AgentClient['migrationStatus'] = (id, options) => this.#call('migrationStatus', { id }, undefined, options);
  pauseTimes: AgentClient['pauseTimes'] = (id, options) => this.#call('pauseTimes', { id }, undefined, options);
  startPostcopy: AgentClient['startPostcopy'] = (id, options) => this.#call('startPostcopy', { id }, undefined, options);
  cancelMigration: AgentClient['cancelMigration'] = (id) => this.#call('cancelMigration', { id });
  sampleDirtyRate: AgentClient['sampleDirtyRate'] = async (id, seconds, options) =>
    (await this.#call<{ bytesPerSec: number }>('sampleDirtyRate', { id }, { seconds }, options)).bytesPerSec;
  setMigrationParameters: AgentClient['setMigrationParameters'] = (id, parameters, options) =>
    this.#call('setMigrationParameters', { id }, parameters, options);
  pauseMigration: AgentClient['pauseMigration'] = (id, options) => this.#call('pauseMigration', { id }, undefined, options);
  resumeMigration: AgentClient['resumeMigration'] = (id, uri, options) => this.#call('resumeMigration', { id }, { uri }, options);
  ensureDirPool: AgentClient['ensureDirPool'] = (pool) => this.#call('ensureDirPool', { pool });
  dirPool: AgentClient['dirPool'] = (pool, options) => this.#call('dirPool', { pool }, undefined, options);
  removeDirPool: AgentClient['removeDirPool'] = (pool) => this.#call('removeDirPool', { pool });
  createDirVolume: AgentClient['createDirVolume'] = (pool, volume, sizeBytes) => this.#call('createDirVolume', { pool, volume }, { sizeBytes });
  copyDirVolume: AgentClient['copyDirVolume'] = (pool, volume, from, linked) => this.#call('copyDirVolume', { pool, volume }, { from, linked });
  dirVolume: AgentClient['dirVolume'] = (pool, volume, options) => this.#call('dirVolume', { pool, volume }, undefined, options);
  restoreBootDisk: AgentClient['restoreBootDisk'] = (backup, disk, key, options) => this.#call('restoreBootDisk', { backup, disk }, { key }, options);
  removeRestoredDisk: AgentClient['removeRestoredDisk'] = (backup, disk) => this.#call('removeRestoredDisk', { backup, disk });
  restoreDirVolume: AgentClient['restoreDirVolume'] = (pool, volume, request, options) => this.#call('restoreDirVolume', { pool, volume }, request, options);
  deleteDirVolume: AgentClient['deleteDirVolume'] = (pool, volume) => this.#call('deleteDirVolume', { pool, volume });
  resizeDirVolume: AgentClient['resizeDirVolume'] = (pool, volume, sizeBytes) => this.#call('resizeDirVolume', { pool, volume }, { sizeBytes });
  applyNetwork: AgentClient['applyNetwork'] = (spec, options) => this.#call('applyNetwork', { id: spec.id }, spec, options);
  removeNetwork: AgentClient['removeNetwork'] = (networkId, options) => this.#call('removeNetwork', { id: networkId }, undefined, options);
  probe: AgentClient['probe'] = (networkId, request, options) => this.#call('probe', { id: networkId }, request, options);
  shutdown: AgentClient['shutdown'] = (stopVms) => this.#call('shutdown', {}, { stopVms });
}

/** An agent stream over a WebSocket: frames are the bytes; an unreachable agent ends it with 1011. */
function webSocketStream(socket: WebSocket): AgentStream {
  let ended = false;
  return {
    send: (data) => socket.send(data),
    close: () => socket.close(),
    listen(handlers) {
      const end = (code: number, reason: string) => {
        if (ended) return;
        ended = true;
        handlers.end(code, reason);
      };
      socket.on('open', () => handlers.open());
      socket.on('message', (data: Buffer) => handlers.data(data));
      socket.on('close', (code, reason) => end(code, reason.toString()));
      socket.on('error', (error) => end(1011, `The host agent is not reachable: ${error.message}`.slice(0, 120)));
    },
  };
}
