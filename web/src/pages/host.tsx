/**
 * One host (`/hosts/:name`): its state, size and what is allocated on it, and its usage over the
 * last hour or day (CPU, memory, disk, network).
 */
import { useEffect, useState } from 'react';
import { api, type Host, unwrap } from '../api/client';
import { UsageBar } from '../components/usage-bar';
import { UsageCharts } from '../components/usage-charts';

export function HostPage({ name }: { name: string }) {
  const [host, setHost] = useState<Host>();
  const [failure, setFailure] = useState<string>();
  useEffect(() => {
    api.GET('/v1/hosts/{host}', { params: { path: { host: name } } }).then(
      (result) => {
        try {
          setHost(unwrap(result));
        } catch (error) {
          setFailure(error instanceof Error ? error.message : String(error));
        }
      },
      (error: unknown) => setFailure(String(error)),
    );
  }, [name]);
  return (
    <>
      <div className="page-head">
        <h1>Host {name}</h1>
      </div>
      {failure && <p role="alert">{failure}</p>}
      {host && (
        <section className="card" aria-label="Status">
          <dl className="facts">
            <dt>State</dt>
            <dd>
              <span className={`state state-${host.status}`}>{host.status}</span>
            </dd>
            <dt>Accelerator</dt>
            <dd title={host.acceleratorReason}>{host.accelerator}</dd>
            <dt>VMs</dt>
            <dd>{host.vmCount}</dd>
          </dl>
          <div className="host-bars">
            <UsageBar label="CPU" used={host.allocatedCpus} total={host.cpus * host.cpuOvercommit} unit="vCPU" />
            <UsageBar label="Memory" used={host.allocatedMemoryMb} total={host.memoryMb * host.memoryOvercommit} unit="MiB" />
          </div>
        </section>
      )}
      <UsageCharts of={{ kind: 'host', name }} />
    </>
  );
}
