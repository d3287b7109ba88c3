/**
 * The cluster event stream (GET /v1/events, Server-Sent Events; contract in the README's web
 * console section). EventSource reconnects by itself and resumes with Last-Event-ID; a `reset`
 * means the resume point is lost, so the caller refetches everything. When the stream cannot be
 * opened at all (an older control plane without it, or a refusal), the state says `off` and the
 * caller refreshes on an interval instead; the stream is tried again every 30 s.
 */
import { useEffect, useRef, useState } from 'react';

export type ResourceType = 'vm' | 'host' | 'network' | 'pool' | 'volume' | 'operation' | 'migration' | 'desktop' | 'desktop-pool';

/** One `change` message of the stream. */
export interface ChangeEvent {
  seq: number;
  time: string;
  type: ResourceType;
  action: 'created' | 'updated' | 'deleted';
  id: string;
  name?: string;
  project: string | null;
  resource?: Record<string, unknown>;
}

export type LiveState = 'connecting' | 'live' | 'off';

const RETRY_CLOSED_STREAM_MS = 30_000;

/** Follows the event stream while mounted; returns whether updates arrive live. */
export function useEventStream(handlers: { onChange(event: ChangeEvent): void; onReset(): void }, types?: ResourceType[]): LiveState {
  const [state, setState] = useState<LiveState>('connecting');
  // The latest handlers, without reopening the stream when a render makes new closures.
  const latest = useRef(handlers);
  latest.current = handlers;
  const query = types ? `?types=${types.join(',')}` : '';
  useEffect(() => {
    let source: EventSource | undefined;
    let retry: ReturnType<typeof setTimeout> | undefined;
    let reopened = false;
    const open = () => {
      source = new EventSource(`/v1/events${query}`, { withCredentials: true });
      let opened = false;
      source.onopen = () => {
        setState('live');
        // A new EventSource has no Last-Event-ID to resume from: what changed while none was
        // open is unknown, so refetch. (The browser's own reconnects resume and need nothing.)
        if (reopened && !opened) latest.current.onReset();
        opened = true;
      };
      source.addEventListener('change', (message) => latest.current.onChange(JSON.parse((message as MessageEvent<string>).data) as ChangeEvent));
      source.addEventListener('reset', () => latest.current.onReset());
      source.onerror = () => {
        // CONNECTING: the browser retries by itself. CLOSED: it gave up (an answer that was no
        // event stream); open a new one later.
        if (source?.readyState === EventSource.CLOSED) {
          setState('off');
          reopened = true;
          retry = setTimeout(open, RETRY_CLOSED_STREAM_MS);
        } else setState('connecting');
      };
    };
    open();
    return () => {
      clearTimeout(retry);
      source?.close();
    };
  }, [query]);
  return state;
}
