/**
 * A desktop pool for those who manage it (/desktops/pools/PROJECT/NAME): its definition (size,
 * spares, mode, grace time, image, base and snapshot), who may use it (grant a user or an OpenID
 * Connect group, revoke), and each desktop with its state, user, times, the work in progress and
 * its error. The API's refusals are shown as it words them. It follows the desktop events of the
 * stream and refreshes on an interval without it.
 */
import { type FormEvent, useCallback, useEffect, useState } from 'react';
import { Link, useLocation } from 'wouter';
import { api, type DesktopPool, unwrap } from '../api/client';
import { LiveIndicator } from '../components/live-indicator';
import { useEventStream } from '../live/events';

const POLL_WITHOUT_STREAM_MS = 5_000;
const messageOf = (error: unknown) => (error instanceof Error ? error.message : String(error));

function usePool(project: string, name: string) {
  const [pool, setPool] = useState<DesktopPool>();
  const [failure, setFailure] = useState<string>();
  const refresh = useCallback(() => {
    api.GET('/v1/desktop-pools/{pool}', { params: { path: { pool: name }, query: { project } } }).then(
      (result) => {
        try {
          setPool(unwrap(result));
          setFailure(undefined);
        } catch (error) {
          setFailure(messageOf(error));
        }
      },
      (error: unknown) => setFailure(messageOf(error)),
    );
  }, [project, name]);
  const live = useEventStream({ onChange: (event) => event.project === project && refresh(), onReset: refresh }, ['desktop', 'desktop-pool']);
  useEffect(refresh, [refresh]);
  useEffect(() => {
    if (live === 'live') return;
    const timer = setInterval(refresh, POLL_WITHOUT_STREAM_MS);
    return () => clearInterval(timer);
  }, [live, refresh]);
  return { pool, failure, refresh, live };
}

function Grants({ pool, refresh }: { pool: DesktopPool; refresh: () => void }) {
  const [subject, setSubject] = useState('');
  const [refusal, setRefusal] = useState<string>();
  const query = (who: string) => (who.startsWith('group:') ? { group: who.slice(6) } : { user: who });
  const done = (result: Promise<{ data?: unknown; error?: unknown; response: Response }>) =>
    result
      .then((answer) => {
        unwrap(answer);
        setRefusal(undefined);
        setSubject('');
        refresh();
      })
      .catch((error: unknown) => setRefusal(messageOf(error)));
  const grant = (event: FormEvent) => {
    event.preventDefault();
    void done(
      api.POST('/v1/desktop-pools/{pool}/grants', { params: { path: { pool: pool.name } }, body: { ...query(subject.trim()), project: pool.project } }),
    );
  };
  const revoke = (who: string) =>
    void done(api.DELETE('/v1/desktop-pools/{pool}/grants', { params: { path: { pool: pool.name }, query: { ...query(who), project: pool.project } } }));
  return (
    <section className="card" aria-label="Who may use it">
      <h2>Who may use it</h2>
      {pool.entitled.length === 0 ? (
        <p>Nobody yet.</p>
      ) : (
        <ul className="grants">
          {pool.entitled.map((who) => (
            <li key={who}>
              <span>{who}</span>{' '}
              <button type="button" onClick={() => revoke(who)} aria-label={`Revoke ${who}`}>
                Revoke
              </button>
            </li>
          ))}
        </ul>
      )}
      <form className="actions" onSubmit={grant} aria-label="Grant the pool">
        <label>
          User, or group:NAME <input value={subject} onChange={(event) => setSubject(event.target.value)} name="subject" autoComplete="off" />
        </label>
        <button type="submit" disabled={subject.trim() === ''}>
          Grant
        </button>
      </form>
      {refusal && (
        <p role="alert" className="error">
          {refusal}
        </p>
      )}
    </section>
  );
}

function Desktops({ pool }: { pool: DesktopPool }) {
  return (
    <section className="card" aria-label="Desktops">
      <h2>Desktops</h2>
      <div className="table-scroll">
        <table>
          <thead>
            <tr>
              <th>Desktop</th>
              <th>State</th>
              <th>User</th>
              <th>Connected</th>
              <th>Disconnected</th>
              <th>Disk</th>
            </tr>
          </thead>
          <tbody>
            {pool.desktops.map((desktop) => (
              <tr key={desktop.id}>
                <td>{desktop.vmId ? <Link href={`/vms/${pool.project}/${desktop.vm}`}>{desktop.vm}</Link> : desktop.vm}</td>
                <td>
                  <span className={`state state-${desktop.state}`}>{desktop.state}</span>
                  {desktop.progress && (
                    <>
                      {' '}
                      <progress max={1} value={desktop.progress.fraction} aria-label={`${desktop.vm}: ${desktop.progress.stage}`} /> {desktop.progress.stage}
                    </>
                  )}
                  {desktop.error && <div className="error">{desktop.error}</div>}
                </td>
                <td>{desktop.assignedTo ?? <span className="hint">free</span>}</td>
                <td>{desktop.connectedAt ? new Date(desktop.connectedAt).toLocaleString() : ''}</td>
                <td>{desktop.disconnectedAt ? new Date(desktop.disconnectedAt).toLocaleString() : ''}</td>
                <td>{desktop.volume}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {pool.desktops.length === 0 && <p>No desktop yet: the first connect (or a spare) makes one.</p>}
    </section>
  );
}

function DeletePool({ pool }: { pool: DesktopPool }) {
  const [, navigate] = useLocation();
  const [sure, setSure] = useState(false);
  const [refusal, setRefusal] = useState<string>();
  const remove = () => {
    if (!sure) return setSure(true);
    api
      .DELETE('/v1/desktop-pools/{pool}', { params: { path: { pool: pool.name }, query: { project: pool.project } } })
      .then((result) => {
        unwrap(result);
        navigate('/desktops');
      })
      .catch((error: unknown) => setRefusal(messageOf(error)));
  };
  return (
    <div className="actions">
      <button type="button" className="danger" onClick={remove}>
        {sure ? `Really delete ${pool.name} and its desktops?` : 'Delete pool'}
      </button>
      {refusal && (
        <p role="alert" className="error">
          {refusal}
        </p>
      )}
    </div>
  );
}

export function DesktopPoolPage({ project, name }: { project: string; name: string }) {
  const { pool, failure, refresh, live } = usePool(project, name);
  return (
    <>
      <div className="page-head">
        <h1>
          Desktop pool {name} <span className="project">{project}</span>
        </h1>
        <LiveIndicator state={live} />
      </div>
      <p>
        <Link href="/desktops">My desktops</Link>
      </p>
      {failure && <p role="alert">{failure}</p>}
      {pool && (
        <>
          <section className="card" aria-label="Definition">
            <dl className="facts">
              <dt>Mode</dt>
              <dd>{pool.mode}</dd>
              <dt>Size</dt>
              <dd>
                {pool.size} desktops ({pool.desktops.length} made, {pool.desktops.filter((d) => d.assignedTo).length} in use)
              </dd>
              <dt>Spare</dt>
              <dd>{pool.spare} kept booted</dd>
              <dt>Grace time</dt>
              <dd>{pool.graceSeconds} s</dd>
              <dt>Each desktop</dt>
              <dd>
                {pool.cpus} vCPU, {pool.memoryMb} MiB, image {pool.image}
                {pool.network ? `, network ${pool.network}` : ''}
              </dd>
              <dt>Base</dt>
              <dd>
                {pool.base} (snapshot {pool.snapshot})
              </dd>
            </dl>
          </section>
          <Grants pool={pool} refresh={refresh} />
          <Desktops pool={pool} />
          <DeletePool pool={pool} />
        </>
      )}
    </>
  );
}
