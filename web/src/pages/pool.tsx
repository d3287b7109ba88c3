/**
 * One storage pool (`/pools/:name`): its state, capacity and warnings, each member device with
 * its read, write and checksum error counters, and the pool's scrubs and rebuilds with their
 * progress; "Scrub" starts one. Kept current by the event stream (the pool's changes, and the
 * operations whose target is this pool).
 */
import { useCallback, useEffect, useState } from 'react';
import { api, type Operation, type Pool, unwrap } from '../api/client';
import { LiveIndicator } from '../components/live-indicator';
import { UsageBar, formatAmount } from '../components/usage-bar';
import { type ChangeEvent, useEventStream } from '../live/events';
import { OperationRow } from './overview';

/** Recent operations read to find this pool's (newest first; the list has no target filter). */
const OPERATIONS_READ = 200;

const isOfPool = (operation: Operation, name: string) => {
  const target = operation.target as { type?: string; name?: string };
  return target.type === 'pool' && target.name === name;
};

export function PoolPage({ name }: { name: string }) {
  const [pool, setPool] = useState<Pool>();
  const [operations, setOperations] = useState<Operation[]>([]);
  const [failure, setFailure] = useState<string>();
  const [asked, setAsked] = useState<string>();
  const refresh = useCallback(() => {
    api.GET('/v1/pools/{pool}', { params: { path: { pool: name } } }).then(
      (result) => {
        try {
          setPool(unwrap(result));
        } catch (error) {
          setFailure(error instanceof Error ? error.message : String(error));
        }
      },
      (error: unknown) => setFailure(String(error)),
    );
    api.GET('/v1/operations', { params: { query: { limit: OPERATIONS_READ } } }).then(
      (result) => setOperations(unwrap(result).filter((operation) => isOfPool(operation, name))),
      () => setOperations([]), // a user who may not read operations still sees the pool
    );
  }, [name]);
  useEffect(refresh, [refresh]);
  const onChange = (event: ChangeEvent) => {
    if (event.type === 'pool' && (event.id === name || event.name === name)) refresh();
    if (event.type === 'operation' && event.resource && isOfPool(event.resource as Operation, name)) {
      const changed = event.resource as Operation;
      setOperations((list) => [changed, ...list.filter((operation) => operation.id !== changed.id)]);
      if (changed.status !== 'running') refresh(); // its end changes the members' counters
    }
  };
  const live = useEventStream({ onChange, onReset: refresh }, ['pool', 'operation']);

  const scrub = async () => {
    setAsked(undefined);
    try {
      const { operation } = unwrap(await api.POST('/v1/pools/{pool}/scrub', { params: { path: { pool: name } }, body: {} }));
      setOperations((list) => [operation as Operation, ...list]);
    } catch (error) {
      setAsked(error instanceof Error ? error.message : String(error));
    }
  };

  return (
    <>
      <div className="page-head">
        <h1>Pool {name}</h1>
        <LiveIndicator state={live} />
      </div>
      {failure && <p role="alert">{failure}</p>}
      {pool && (
        <>
          <section className="card" aria-label="Status">
            <dl className="facts">
              <dt>State</dt>
              <dd>
                <span className={`state state-${pool.state}`}>{pool.state}</span>
                {pool.readOnly && <span className="warning"> read-only: {pool.readOnlyReason}</span>}
              </dd>
              <dt>Layout</dt>
              <dd>
                {pool.kind} {pool.layout}
              </dd>
              <dt>Volumes</dt>
              <dd>
                {pool.volumes}, {formatAmount(pool.provisionedBytes, 'B')} provisioned
              </dd>
            </dl>
            <UsageBar label="Capacity" used={pool.allocatedBytes} total={pool.sizeBytes} unit="B" />
            {pool.warnings.length > 0 && (
              <ul className="warnings">
                {pool.warnings.map((warning) => (
                  <li key={warning}>{warning}</li>
                ))}
              </ul>
            )}
          </section>
          <section className="card" aria-label="Members">
            <h2>Members</h2>
            <table>
              <thead>
                <tr>
                  <th>#</th>
                  <th>Device</th>
                  <th>State</th>
                  <th>Read errors</th>
                  <th>Write errors</th>
                  <th>Checksum errors</th>
                </tr>
              </thead>
              <tbody>
                {pool.members.map((member) => (
                  <tr key={member.index} data-member={member.index}>
                    <td>{member.index}</td>
                    <td className="migration-stage">{member.path}</td>
                    <td>
                      <span className={`state state-${member.state}`}>{member.state}</span>
                    </td>
                    <td>{member.readErrors ?? 0}</td>
                    <td>{member.writeErrors ?? 0}</td>
                    <td>{member.checksumErrors ?? 0}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </section>
        </>
      )}
      <section className="card" aria-label="Scrubs and rebuilds">
        <h2>Scrubs and rebuilds</h2>
        {pool?.kind !== 'dir' && (
          <p>
            <button type="button" onClick={() => void scrub()}>
              Scrub
            </button>{' '}
            <span className="hint">reads everything, finds silent corruption by checksum and repairs it from the redundancy</span>
          </p>
        )}
        {asked && <p role="alert">{asked}</p>}
        {operations.length === 0 ? (
          <p className="muted">None recently.</p>
        ) : (
          <ul className="operations">
            {operations.map((operation) => (
              <OperationRow key={operation.id} operation={operation} />
            ))}
          </ul>
        )}
      </section>
    </>
  );
}
