/**
 * One operation (`/operations/:id`): its state and progress, and for a migration the live view
 * of its stages, passes and prediction (the operation's event stream).
 */
import { useEffect, useState } from 'react';
import { api, type Operation, unwrap } from '../api/client';
import { MigrationLive } from '../components/migration-live';
import { OperationRow } from './overview';

export function OperationPage({ id }: { id: string }) {
  const [operation, setOperation] = useState<Operation>();
  const [failure, setFailure] = useState<string>();
  useEffect(() => {
    api.GET('/v1/operations/{id}', { params: { path: { id } } }).then(
      (result) => {
        try {
          setOperation(unwrap(result));
        } catch (error) {
          setFailure(error instanceof Error ? error.message : String(error));
        }
      },
      (error: unknown) => setFailure(String(error)),
    );
  }, [id]);
  return (
    <>
      <div className="page-head">
        <h1>Operation {id}</h1>
      </div>
      {failure && <p role="alert">{failure}</p>}
      {operation && (
        <section className="card" aria-label="Operation">
          <ul className="operations">
            <OperationRow operation={operation} />
          </ul>
        </section>
      )}
      {operation?.kind === 'vm.migrate' && <MigrationLive operationId={id} />}
    </>
  );
}
