/**
 * The overview: hosts with their allocated / total CPU and memory, the VMs, networks, storage
 * pools and recent operations, kept current by the event stream (live/cluster-state.ts). A list
 * the user's roles do not include says so instead of showing nothing.
 */
import type { ReactNode } from 'react';
import { Link } from 'wouter';
import type { Host, Network, Operation, Pool } from '../api/client';
import { LiveIndicator } from '../components/live-indicator';
import { formatAmount, UsageBar } from '../components/usage-bar';
import { VmList } from '../components/vm-list';
import { type Listed, useClusterState } from '../live/cluster-state';

function Section<T>({ title, list, children }: { title: string; list: Listed<T>; children: (items: T[]) => ReactNode }) {
  const id = `section-${title.toLowerCase().replaceAll(' ', '-')}`;
  return (
    <section aria-labelledby={id} className="card">
      <h2 id={id}>{title}</h2>
      {'items' in list ? list.items.length === 0 ? <p className="empty">None</p> : children(list.items) : <p className="refused">{list.refused}</p>}
    </section>
  );
}

function HostCard({ host }: { host: Host }) {
  return (
    <li className="host">
      <div className="host-title">
        <strong>
          <Link href={`/hosts/${encodeURIComponent(host.name)}`}>{host.name}</Link>
        </strong>{' '}
        <span className={`state state-${host.status}`}>{host.status}</span>{' '}
        <span className="tag" title={host.acceleratorReason}>
          {host.accelerator}
        </span>
        <span className="muted"> {host.vmCount} VMs</span>
      </div>
      <UsageBar label="CPU" used={host.allocatedCpus} total={host.cpus * host.cpuOvercommit} unit="vCPU" />
      <UsageBar label="Memory" used={host.allocatedMemoryMb} total={host.memoryMb * host.memoryOvercommit} unit="MiB" />
    </li>
  );
}

function NetworkTable({ networks }: { networks: Network[] }) {
  return (
    <div className="table-scroll">
      <table>
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Project</th>
            <th scope="col">Subnet</th>
            <th scope="col">NICs</th>
            <th scope="col">DHCP / NAT</th>
          </tr>
        </thead>
        <tbody>
          {networks.map((network) => (
            <tr key={network.id}>
              <td>{network.name}</td>
              <td>{network.project}</td>
              <td>{network.subnet}</td>
              <td>{network.nicCount}</td>
              <td>
                {network.dhcp ? 'DHCP' : '—'} / {network.nat ? 'NAT' : '—'}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function PoolCard({ pool }: { pool: Pool }) {
  return (
    <li className="pool">
      <div>
        <Link href={`/pools/${encodeURIComponent(pool.name)}`}>
          <strong>{pool.name}</strong>
        </Link>{' '}
        <span className={`state state-${pool.state}`}>{pool.state}</span> <span className="tag">{pool.layout}</span>
        {pool.readOnly && <span className="warning"> read-only: {pool.readOnlyReason}</span>}
      </div>
      <UsageBar label="Capacity" used={pool.allocatedBytes} total={pool.sizeBytes} unit="B" />
      <span className="muted">
        {pool.volumes} volumes, {formatAmount(pool.provisionedBytes, 'B')} provisioned
      </span>
      {pool.warnings.length > 0 && (
        <ul className="warnings">
          {pool.warnings.map((warning) => (
            <li key={warning}>{warning}</li>
          ))}
        </ul>
      )}
    </li>
  );
}

/** An operation with its stage and progress, and the error it ended with. */
export function OperationRow({ operation }: { operation: Operation }) {
  const target = operation.target as { type?: string; name?: string };
  const error = operation.error as { message?: string } | undefined;
  return (
    <li className="operation" data-operation={operation.id}>
      <span>
        <strong>{operation.kind}</strong> {target.type} {target.name}
      </span>
      <span className={`state state-${operation.status}`}>{operation.status}</span>
      <span className="muted">{operation.stage}</span>
      <progress max={1} value={operation.progress} aria-label={`${operation.kind} ${target.name ?? ''} progress`} />
      {error?.message && <span className="error">{error.message}</span>}
    </li>
  );
}

export function OverviewPage() {
  const { state, live, error } = useClusterState();
  return (
    <>
      <div className="page-head">
        <h1>Overview</h1>
        <LiveIndicator state={live} />
      </div>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {!state ? (
        <p aria-busy="true">Loading…</p>
      ) : (
        <div className="overview">
          <Section title="Hosts" list={state.hosts}>
            {(hosts) => (
              <ul className="hosts">
                {hosts.map((host) => (
                  <HostCard key={host.id} host={host} />
                ))}
              </ul>
            )}
          </Section>
          <Section title="Virtual machines" list={state.vms}>
            {(vms) => <VmList vms={vms} />}
          </Section>
          <Section title="Operations" list={state.operations}>
            {(operations) => (
              <ul className="operations">
                {operations.map((operation) => (
                  <OperationRow key={operation.id} operation={operation} />
                ))}
              </ul>
            )}
          </Section>
          <Section title="Networks" list={state.networks}>
            {(networks) => <NetworkTable networks={networks} />}
          </Section>
          <Section title="Storage pools" list={state.pools}>
            {(pools) => (
              <ul className="pools">
                {pools.map((pool) => (
                  <PoolCard key={pool.name} pool={pool} />
                ))}
              </ul>
            )}
          </Section>
        </div>
      )}
      <p>
        <Link href="/vms/new">Create a VM</Link>
      </p>
    </>
  );
}
