/**
 * What the overview shows, kept current: every list fetched once, then changed in place by the
 * event stream's `change` messages (each carries the resource as its GET shows it), and fetched
 * again on `reset`. Without the stream the lists are fetched again every few seconds.
 */
import { useCallback, useEffect, useRef, useState } from 'react';
import { ApiError, api, type Host, type Network, type Operation, type Pool, type Vm, unwrap } from '../api/client';
import { type ChangeEvent, type LiveState, useEventStream } from './events';

/** A list, or why it is not shown (the user's roles do not include it, or the fetch failed). */
export type Listed<T> = { items: T[] } | { refused: string };

export interface ClusterState {
  hosts: Listed<Host>;
  vms: Listed<Vm>;
  networks: Listed<Network>;
  pools: Listed<Pool>;
  operations: Listed<Operation>;
}

const POLL_WITHOUT_STREAM_MS = 5_000;
const OPERATIONS_SHOWN = 50;

async function listed<T>(fetch: () => Promise<T[]>): Promise<Listed<T>> {
  try {
    return { items: await fetch() };
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) return { refused: 'Your roles do not include this list' };
    return { refused: error instanceof Error ? error.message : String(error) };
  }
}

/** VMs in one answer of the API, at most (its VM_PAGE_MAX). */
const VM_PAGE = 1000;

/** Every VM one may see: the API answers a page at a time (`limit`, then `marker`: the last VM's id). */
async function everyVm(): Promise<Vm[]> {
  const vms: Vm[] = [];
  for (;;) {
    const marker = vms.length > 0 ? { marker: vms[vms.length - 1].id } : {};
    const page = unwrap(await api.GET('/v1/vms', { params: { query: { limit: VM_PAGE, ...marker } } }));
    vms.push(...page);
    if (page.length < VM_PAGE) return vms;
  }
}

/** Fetches every list of the overview. */
export async function fetchClusterState(): Promise<ClusterState> {
  const [hosts, vms, networks, pools, operations] = await Promise.all([
    listed(async () => unwrap(await api.GET('/v1/hosts'))),
    listed(everyVm),
    listed(async () => unwrap(await api.GET('/v1/networks'))),
    listed(async () => unwrap(await api.GET('/v1/pools'))),
    listed(async () => unwrap(await api.GET('/v1/operations', { params: { query: { limit: OPERATIONS_SHOWN } } }))),
  ]);
  return { hosts, vms, networks, pools, operations };
}

const listOfType = { vm: 'vms', host: 'hosts', network: 'networks', pool: 'pools', operation: 'operations' } as const;

/** The identity of a listed resource: its id, or its name for those without one (pools). */
function keyOf(resource: object): string | undefined {
  const { id, name } = resource as { id?: string; name?: string };
  return id ?? name;
}

/** The state after one change message (unchanged for types the overview does not list). */
export function applyChange(state: ClusterState, event: ChangeEvent): ClusterState {
  const listName = listOfType[event.type as keyof typeof listOfType];
  if (!listName) return state;
  const list = state[listName];
  if (!('items' in list)) return state;
  const matches = (item: object) => keyOf(item) === event.id || (event.name !== undefined && keyOf(item) === event.name);
  let items = (list.items as object[]).filter((item) => !matches(item));
  if (event.action !== 'deleted' && event.resource) {
    const index = (list.items as object[]).findIndex(matches);
    items = [...items];
    items.splice(index === -1 ? (listName === 'operations' ? 0 : items.length) : index, 0, event.resource);
  }
  if (listName === 'operations') items = items.slice(0, OPERATIONS_SHOWN);
  return { ...state, [listName]: { items } };
}

/** The overview's state, live where the event stream is, refreshed on an interval where not. */
export function useClusterState(): { state: ClusterState | undefined; live: LiveState; error: string | undefined } {
  const [state, setState] = useState<ClusterState>();
  const [error, setError] = useState<string>();
  // One fetch at a time: on a slow control plane, refreshes must not pile up behind each other.
  const fetching = useRef(false);
  // Changes that arrive while a fetch is under way are applied on top of its answer, which may
  // predate them (the stream is opened before the first fetch, so nothing falls in between).
  const arrivedWhileFetching = useRef<ChangeEvent[]>([]);
  const refresh = useCallback(() => {
    if (fetching.current) return;
    fetching.current = true;
    arrivedWhileFetching.current = [];
    fetchClusterState()
      .then(
        (next) => {
          setState(arrivedWhileFetching.current.reduce(applyChange, next));
          setError(undefined);
        },
        (failure: unknown) => setError(failure instanceof Error ? failure.message : String(failure)),
      )
      .finally(() => {
        fetching.current = false;
        arrivedWhileFetching.current = [];
      });
  }, []);
  const live = useEventStream({
    onChange: (event) => {
      if (fetching.current) arrivedWhileFetching.current.push(event);
      else setState((current) => (current ? applyChange(current, event) : current));
    },
    onReset: refresh,
  });
  useEffect(refresh, [refresh]);
  useEffect(() => {
    if (live === 'live') return;
    const timer = setInterval(refresh, POLL_WITHOUT_STREAM_MS);
    return () => clearInterval(timer);
  }, [live, refresh]);
  return { state, live, error };
}
