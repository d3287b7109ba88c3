import type { LiveState } from '../live/events';

/** Says whether the page follows the event stream, or refreshes on an interval without it. */
export function LiveIndicator({ state }: { state: LiveState }) {
  const text = {
    live: 'Live',
    connecting: 'Connecting to live updates…',
    off: 'Live updates unavailable: refreshing every 5 s',
  }[state];
  return (
    <p className={`live live-${state}`} role="status" data-live={state}>
      {text}
    </p>
  );
}
