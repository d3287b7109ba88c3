/**
 * One VM: its state and where it runs, every action the CLI has (vm-actions.tsx), the operation
 * an action started with its progress (a migration live, with its passes and prediction), links to
 * its screen and serial console, its usage graphs, the serial log and the migration history. It follows the
 * event stream for this VM and its operations, and refreshes on an interval without it.
 */
import { useCallback, useEffect, useState } from 'react';
import { Link, useLocation } from 'wouter';
import { api, type Operation, type Vm, unwrap } from '../api/client';
import { LiveIndicator } from '../components/live-indicator';
import { MigrationLive } from '../components/migration-live';
import { UsageCharts } from '../components/usage-charts';
import { type LiveState, useEventStream } from '../live/events';
import { OperationRow } from './overview';
import { VmActions } from './vm-actions';

const POLL_WITHOUT_STREAM_MS = 5_000;
const LOG_LINES = 200;

type Migration = Awaited<ReturnType<typeof fetchMigrations>>[number];

async function fetchMigrations(project: string, name: string) {
  return unwrap(await api.GET('/v1/vms/{vm}/migrations', { params: { path: { vm: name }, query: { project } } }));
}

async function fetchLog(project: string, name: string): Promise<string[]> {
  return unwrap(await api.GET('/v1/vms/{vm}/log', { params: { path: { vm: name }, query: { project, lines: LOG_LINES } } })).lines;
}

/** The VM, its log, its migrations and the operation last started on it, kept current. */
function useVmState(project: string, name: string) {
  const [vm, setVm] = useState<Vm>();
  const [gone, setGone] = useState<string>();
  const [log, setLog] = useState<string[]>([]);
  const [migrations, setMigrations] = useState<Migration[]>([]);
  const [operation, setOperation] = useState<Operation>();
  const refresh = useCallback(() => {
    api.GET('/v1/vms/{vm}', { params: { path: { vm: name }, query: { project } } }).then(
      (result) => {
        try {
          setVm(unwrap(result));
          setGone(undefined);
        } catch (error) {
          setGone(error instanceof Error ? error.message : String(error));
        }
      },
      (error: unknown) => setGone(String(error)),
    );
    fetchLog(project, name).then(setLog, () => undefined);
    fetchMigrations(project, name).then(setMigrations, () => undefined);
  }, [project, name]);
  const live = useEventStream(
    {
      onChange: (event) => {
        if (event.type === 'vm' && (event.id === vm?.id || (event.name === name && event.project === project))) {
          if (event.action === 'deleted') setGone(`${name} was deleted`);
          else if (event.resource) setVm(event.resource as unknown as Vm);
        } else if (event.type === 'operation' && event.id === operation?.id && event.resource) setOperation(event.resource as unknown as Operation);
        else if (event.type === 'migration') fetchMigrations(project, name).then(setMigrations, () => undefined);
      },
      onReset: refresh,
    },
    ['vm', 'operation', 'migration'],
  );
  useEffect(refresh, [refresh]);
  useEffect(() => {
    // The serial log is not in the event stream: it is read again every few seconds, as is
    // everything while the stream is off.
    const timer = setInterval(() => {
      if (live === 'live') {
        fetchLog(project, name).then(setLog, () => undefined);
        return;
      }
      refresh();
      if (operation?.status === 'running')
        api.GET('/v1/operations/{id}', { params: { path: { id: operation.id } } }).then(
          (result) => result.data && setOperation(result.data),
          () => undefined,
        );
    }, POLL_WITHOUT_STREAM_MS);
    return () => clearInterval(timer);
  }, [live, refresh, operation, project, name]);
  return { vm, setVm, gone, log, migrations, operation, setOperation, live };
}

function VmFacts({ vm }: { vm: Vm }) {
  return (
    <section className="card" aria-label="Status">
      <dl className="facts">
        <dt>State</dt>
        <dd>
          <span className={`state state-${vm.state}`} data-testid="vm-state">
            {vm.state}
          </span>{' '}
          {vm.ready ? '(guest ready)' : ''}
        </dd>
        <dt>Host</dt>
        <dd>{vm.host || '—'}</dd>
        <dt>Accelerator</dt>
        <dd>{vm.accelerator}</dd>
        <dt>Size</dt>
        <dd>
          {vm.cpus} vCPU, {vm.memoryMb} MiB
        </dd>
        <dt>Addresses</dt>
        <dd>{[...vm.nics.map((nic) => `${nic.ip} (${nic.network})`), ...vm.guestIps].join(', ') || '—'}</dd>
        <dt>Post-copy</dt>
        <dd>{vm.allowPostcopy ? 'allowed' : 'not allowed'}</dd>
        {vm.lastError && (
          <>
            <dt>Last error</dt>
            <dd className="error">{vm.lastError}</dd>
          </>
        )}
      </dl>
    </section>
  );
}

function MigrationHistory({ migrations }: { migrations: Migration[] }) {
  return (
    <section className="card" aria-labelledby="migrations-heading">
      <h2 id="migrations-heading">Migration history</h2>
      {migrations.length === 0 ? (
        <p className="empty">Never migrated</p>
      ) : (
        <div className="table-scroll">
          <table>
            <thead>
              <tr>
                <th scope="col">Started</th>
                <th scope="col">From → to</th>
                <th scope="col">Strategy</th>
                <th scope="col">Status</th>
                <th scope="col">Ended</th>
              </tr>
            </thead>
            <tbody>
              {migrations.map((migration) => (
                <tr key={migration.id}>
                  <td>{new Date(migration.startedAt).toLocaleString()}</td>
                  <td>
                    {migration.from} → {migration.to}
                  </td>
                  <td>{migration.strategy}</td>
                  <td>{migration.status}</td>
                  <td>{migration.endedAt ? new Date(migration.endedAt).toLocaleString() : '—'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

function VmHead({ vm, live }: { vm: Vm; live: LiveState }) {
  return (
    <div className="page-head">
      <h1>
        {vm.name} <span className="project">{vm.project}</span>
      </h1>
      <LiveIndicator state={live} />
    </div>
  );
}

export function VmPage({ project, name }: { project: string; name: string }) {
  const { vm, setVm, gone, log, migrations, operation, setOperation, live } = useVmState(project, name);
  const [, navigate] = useLocation();
  const base = `/vms/${encodeURIComponent(project)}/${encodeURIComponent(name)}`;
  if (gone && !vm) return <p role="alert">{gone}</p>;
  if (!vm) return <p aria-busy="true">Loading…</p>;
  return (
    <>
      <VmHead vm={vm} live={live} />
      {gone && <p role="alert">{gone}</p>}
      <VmFacts vm={vm} />
      <VmActions vm={vm} onOperation={setOperation} onChanged={setVm} onDeleted={() => navigate('/')} />
      {operation?.kind === 'vm.migrate' && <MigrationLive operationId={operation.id} />}
      {operation && operation.kind !== 'vm.migrate' && (
        <section className="card" aria-label="Last action">
          <h2>Last action</h2>
          <ul className="operations">
            <OperationRow operation={operation} />
          </ul>
        </section>
      )}
      <section className="card" aria-labelledby="console-heading">
        <h2 id="console-heading">Screen and console</h2>
        <p className="inline-links">
          <Link href={`${base}/screen`} className="button">
            Screen
          </Link>
          <Link href={`${base}/serial`} className="button">
            Serial console
          </Link>
        </p>
      </section>
      <UsageCharts of={{ kind: 'vm', project, name }} />
      <section className="card" aria-labelledby="log-heading">
        <h2 id="log-heading">Serial log</h2>
        {/* biome-ignore lint/a11y/noNoninteractiveTabindex: a scrolling box must take focus to be scrolled by keyboard (WCAG 2.1.1) */}
        <pre className="serial-log" tabIndex={0}>
          {log.join('\n') || '(empty)'}
        </pre>
      </section>
      <MigrationHistory migrations={migrations} />
    </>
  );
}
