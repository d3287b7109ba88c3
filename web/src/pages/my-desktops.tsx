/**
 * "My desktops" (/desktops): the desktop pools the signed-in user may use, the desktop they hold
 * in each with its state, "Get a desktop" (the broker's connect; the work readying it shows while
 * it runs, then the desktop's screen opens) and "Leave" (log off: a floating desktop is reset).
 * Below, for those who may read pools, the pools of the cluster with their pages and a link to
 * create one. It follows the desktop events of the stream (a desktop's user sees their own without
 * any role) and refreshes on an interval without it.
 */
import { useCallback, useEffect, useState } from 'react';
import { Link, useLocation } from 'wouter';
import { api, type Desktop, type DesktopPool, type MyDesktop, unwrap } from '../api/client';
import { whoAmI } from '../api/session';
import { LiveIndicator } from '../components/live-indicator';
import { useEventStream } from '../live/events';

const POLL_WITHOUT_STREAM_MS = 5_000;
/** While a desktop asked for is being readied, without the stream: how often to look again. */
const POLL_WHILE_READYING_MS = 1_000;

/** The page of a desktop's screen (the VM screen page, web/src/components/vnc-screen.tsx). */
export function screenPath(project: string, vm: string): string {
  return `/vms/${encodeURIComponent(project)}/${encodeURIComponent(vm)}/screen`;
}

const messageOf = (error: unknown) => (error instanceof Error ? error.message : String(error));

/** The pools the user may use, and (for readers of pools) every pool; kept current. */
function useDesktops() {
  const [mine, setMine] = useState<MyDesktop[]>();
  const [pools, setPools] = useState<DesktopPool[] | null>();
  const [failure, setFailure] = useState<string>();
  const refresh = useCallback(() => {
    api.GET('/v1/desktops').then(
      (result) => {
        try {
          setMine(unwrap(result));
          setFailure(undefined);
        } catch (error) {
          setFailure(messageOf(error));
        }
      },
      (error: unknown) => setFailure(messageOf(error)),
    );
    // A user with no role (only grants of pools) sees only their own desktops: the pools' section
    // is for those who may read pools, and shows when they hold a role or some pool is visible.
    Promise.all([api.GET('/v1/desktop-pools'), whoAmI()]).then(
      ([result, who]) => {
        const visible = result.response.ok ? (result.data ?? []) : [];
        setPools(visible.length > 0 || (who?.roles.length ?? 0) > 0 ? visible : null);
      },
      () => setPools(null),
    );
  }, []);
  const live = useEventStream({ onChange: refresh, onReset: refresh }, ['desktop', 'desktop-pool']);
  useEffect(refresh, [refresh]);
  useEffect(() => {
    if (live === 'live') return;
    const timer = setInterval(refresh, POLL_WITHOUT_STREAM_MS);
    return () => clearInterval(timer);
  }, [live, refresh]);
  return { mine, pools, failure, refresh, live };
}

/** What the desktop is doing, in words, with the progress of the work readying it. */
function DesktopStatus({ desktop }: { desktop: Desktop }) {
  return (
    <>
      <span className={`state state-${desktop.state}`}>{desktop.state}</span>
      {desktop.progress && (
        <span className="desktop-progress">
          {' '}
          <progress max={1} value={desktop.progress.fraction} aria-label={`${desktop.vm}: ${desktop.progress.stage}`} /> {desktop.progress.stage}
        </span>
      )}
      {desktop.error && <span className="error"> {desktop.error}</span>}
    </>
  );
}

/** One pool the user may use: their desktop, getting one, leaving it. */
function PoolCard({ entry, refresh, live }: { entry: MyDesktop; refresh: () => void; live: boolean }) {
  const [, navigate] = useLocation();
  const [asked, setAsked] = useState(false);
  const [busy, setBusy] = useState<'connect' | 'leave'>();
  const [refusal, setRefusal] = useState<string>();
  const params = { params: { path: { pool: entry.pool }, query: { project: entry.project } } };
  const desktop = entry.desktop;
  const running = desktop?.state === 'running';
  // Asked for, and now running: its screen opens.
  useEffect(() => {
    if (asked && desktop && running) navigate(screenPath(entry.project, desktop.vm));
  }, [asked, desktop, running, entry.project, navigate]);
  // Without the stream, a desktop being readied is looked at every second.
  useEffect(() => {
    if (!asked || running || live) return;
    const timer = setInterval(refresh, POLL_WHILE_READYING_MS);
    return () => clearInterval(timer);
  }, [asked, running, live, refresh]);
  const act = (what: 'connect' | 'leave') => {
    setBusy(what);
    setRefusal(undefined);
    const request: Promise<unknown> =
      what === 'connect' ? api.POST('/v1/desktop-pools/{pool}/connect', params).then(unwrap) : api.POST('/v1/desktop-pools/{pool}/leave', params).then(unwrap);
    request
      .then(() => {
        setAsked(what === 'connect');
        refresh();
      })
      .catch((error: unknown) => setRefusal(messageOf(error)))
      .finally(() => setBusy(undefined));
  };
  return (
    <section className="card desktop-card" aria-label={`Desktop pool ${entry.pool}`}>
      <h2>
        {entry.pool} <span className="project">{entry.project}</span> <span className="tag">{entry.mode}</span>
      </h2>
      {desktop ? (
        <p>
          Your desktop <strong>{desktop.vm}</strong>: <DesktopStatus desktop={desktop} />
        </p>
      ) : (
        <p>You hold no desktop of this pool.</p>
      )}
      {asked && !running && (
        <p role="status" aria-busy="true">
          Getting your desktop ready; its screen opens when it runs…
        </p>
      )}
      <div className="actions">
        <button type="button" disabled={busy !== undefined} onClick={() => act('connect')}>
          {desktop ? 'Open my desktop' : 'Get a desktop'}
        </button>
        {desktop && running && <Link href={screenPath(entry.project, desktop.vm)}>Screen</Link>}
        {desktop && (
          <button type="button" disabled={busy !== undefined} onClick={() => act('leave')}>
            Leave
          </button>
        )}
        {desktop && entry.mode === 'floating' && <span className="hint">Leaving gives the desktop back: it is reset, your files on it are gone.</span>}
      </div>
      {refusal && (
        <p role="alert" className="error">
          {refusal}
        </p>
      )}
    </section>
  );
}

/** `first`: the pool whose card comes first (the page `nubis desktop connect POOL` prints). */
export function MyDesktopsPage({ first }: { first?: string } = {}) {
  const { mine, pools, failure, refresh, live } = useDesktops();
  const ordered = mine && first ? [...mine.filter((entry) => entry.pool === first), ...mine.filter((entry) => entry.pool !== first)] : mine;
  return (
    <>
      <div className="page-head">
        <h1>My desktops</h1>
        <LiveIndicator state={live} />
      </div>
      {failure && <p role="alert">{failure}</p>}
      {!mine ? (
        !failure && <p aria-busy="true">Loading your desktops…</p>
      ) : mine.length === 0 ? (
        <p>No desktop pool is granted to you. An admin grants one with nubis desktop pool grant POOL {'<your name>'}.</p>
      ) : (
        ordered?.map((entry) => <PoolCard key={`${entry.project}/${entry.pool}`} entry={entry} refresh={refresh} live={live === 'live'} />)
      )}
      {pools && (
        <section className="card" aria-label="Desktop pools">
          <h2>Desktop pools</h2>
          <div className="table-scroll">
            <table>
              <thead>
                <tr>
                  <th>Pool</th>
                  <th>Mode</th>
                  <th>Desktops</th>
                  <th>In use</th>
                  <th>Spare</th>
                </tr>
              </thead>
              <tbody>
                {pools.map((pool) => (
                  <tr key={pool.id}>
                    <td>
                      <Link href={`/desktops/pools/${pool.project}/${pool.name}`}>{pool.name}</Link> <span className="project">{pool.project}</span>
                    </td>
                    <td>{pool.mode}</td>
                    <td>
                      {pool.desktops.length} of {pool.size}
                    </td>
                    <td>{pool.desktops.filter((d) => d.assignedTo).length}</td>
                    <td>{pool.spare}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <p>
            <Link href="/desktops/pools/new">New desktop pool</Link>
          </p>
        </section>
      )}
    </>
  );
}
