/**
 * The actions on one VM, as the CLI has them: power (start, stop, reboot, pause, resume), delete
 * (asked twice), migration (strategy and target host), volumes (attach POOL/VOLUME, detach) and
 * the post-copy policy. Each starts an operation (shown by the page) or answers with the API's
 * own message.
 */
import { type FormEvent, useEffect, useState } from 'react';
import { api, type Host, type Operation, type Vm, unwrap } from '../api/client';

type Props = { vm: Vm; onOperation(operation: Operation): void; onChanged(vm: Vm): void; onDeleted(): void };
/** Runs an action; its operation (if it started one) goes to the page, a refusal next to the buttons. */
type Act = (action: () => Promise<{ operation: Operation } | undefined>) => void;

function whereOf(vm: Vm) {
  return { params: { path: { vm: vm.name }, query: { project: vm.project } } };
}

function PowerButtons({ vm, busy, act, onDeleted }: { vm: Vm; busy: boolean; act: Act; onDeleted(): void }) {
  const [confirmDelete, setConfirmDelete] = useState(false);
  const where = whereOf(vm);
  const power = {
    start: async () => unwrap(await api.POST('/v1/vms/{vm}/start', { ...where, body: {} })),
    stop: async () => unwrap(await api.POST('/v1/vms/{vm}/stop', { ...where, body: { force: false, timeoutSeconds: 30 } })),
    reboot: async () => unwrap(await api.POST('/v1/vms/{vm}/reboot', { ...where, body: { force: false, timeoutSeconds: 30 } })),
    pause: async () => unwrap(await api.POST('/v1/vms/{vm}/pause', { ...where, body: {} })),
    resume: async () => unwrap(await api.POST('/v1/vms/{vm}/resume', { ...where, body: {} })),
  };
  const remove = async () => {
    const answer = unwrap(await api.DELETE('/v1/vms/{vm}', where));
    onDeleted();
    return answer;
  };
  return (
    <div className="actions">
      {(Object.keys(power) as (keyof typeof power)[]).map((name) => (
        <button key={name} type="button" disabled={busy} onClick={() => act(power[name])}>
          {name[0].toUpperCase() + name.slice(1)}
        </button>
      ))}
      {confirmDelete ? (
        <span className="confirm">
          Delete {vm.name} and its local disks?{' '}
          <button type="button" className="danger" onClick={() => act(remove)}>
            Yes, delete
          </button>{' '}
          <button type="button" onClick={() => setConfirmDelete(false)}>
            Cancel
          </button>
        </span>
      ) : (
        <button type="button" className="danger" disabled={busy} onClick={() => setConfirmDelete(true)}>
          Delete
        </button>
      )}
    </div>
  );
}

function MigrateForm({ vm, busy, act }: { vm: Vm; busy: boolean; act: Act }) {
  const [hosts, setHosts] = useState<Host[]>();
  useEffect(() => {
    // Hosts are a platform list: a project member may not read it, and types the target instead.
    api.GET('/v1/hosts').then(
      (result) => result.response.ok && setHosts(result.data),
      () => undefined,
    );
  }, []);
  const migrate = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const form = event.currentTarget.elements;
    const strategy = (form.namedItem('strategy') as HTMLSelectElement).value as 'auto' | 'precopy' | 'postcopy';
    const to = (form.namedItem('to') as HTMLInputElement | HTMLSelectElement).value.trim();
    act(async () => unwrap(await api.POST('/v1/vms/{vm}/migrate', { ...whereOf(vm), body: { strategy, ...(to ? { to } : {}) } })));
  };
  return (
    <form onSubmit={migrate} aria-label="Migrate">
      <h3>Migrate</h3>
      <label>
        Strategy
        <select name="strategy" defaultValue="auto">
          <option value="auto">auto (pre-copy, post-copy if it does not converge)</option>
          <option value="precopy">pre-copy</option>
          <option value="postcopy">post-copy</option>
        </select>
      </label>
      <label htmlFor="migrate-to">Target host</label>
      {hosts ? (
        <select id="migrate-to" name="to" defaultValue="">
          <option value="">chosen by the scheduler</option>
          {hosts
            .filter((host) => host.name !== vm.host)
            .map((host) => (
              <option key={host.id} value={host.name}>
                {host.name} ({host.status})
              </option>
            ))}
        </select>
      ) : (
        <input id="migrate-to" name="to" placeholder="empty: chosen by the scheduler" />
      )}
      <button type="submit" disabled={busy}>
        Migrate
      </button>
    </form>
  );
}

function VolumesForm({ vm, busy, act }: { vm: Vm; busy: boolean; act: Act }) {
  const attach = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const volume = (event.currentTarget.elements.namedItem('volume') as HTMLInputElement).value.trim();
    act(async () => unwrap(await api.POST('/v1/vms/{vm}/disks', { ...whereOf(vm), body: { volume } })));
  };
  const detach = (volume: string) => {
    const [pool, name] = volume.split('/');
    act(async () =>
      unwrap(await api.DELETE('/v1/vms/{vm}/disks/{pool}/{volume}', { params: { path: { vm: vm.name, pool, volume: name }, query: { project: vm.project } } })),
    );
  };
  return (
    <form onSubmit={attach} aria-label="Attach a volume">
      <h3>Volumes</h3>
      {vm.disks.length > 0 && (
        <ul className="disks">
          {vm.disks.map((disk) => (
            <li key={disk.volume}>
              {disk.device}: {disk.volume}{' '}
              <button type="button" disabled={busy} onClick={() => detach(disk.volume)}>
                Detach
              </button>
            </li>
          ))}
        </ul>
      )}
      <label>
        Volume (POOL/VOLUME)
        <input name="volume" required />
      </label>
      <button type="submit" disabled={busy}>
        Attach
      </button>
    </form>
  );
}

export function VmActions({ vm, onOperation, onChanged, onDeleted }: Props) {
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const act: Act = (action) => {
    setBusy(true);
    setError(undefined);
    action().then(
      (answer) => {
        if (answer) onOperation(answer.operation);
        setBusy(false);
      },
      (failure: unknown) => {
        setError(failure instanceof Error ? failure.message : String(failure));
        setBusy(false);
      },
    );
  };
  const setPostcopy = (allowPostcopy: boolean) =>
    act(async () => {
      onChanged(unwrap(await api.PATCH('/v1/vms/{vm}', { ...whereOf(vm), body: { allowPostcopy } })));
      return undefined;
    });
  return (
    <section className="card" aria-labelledby="actions-heading">
      <h2 id="actions-heading">Actions</h2>
      <PowerButtons vm={vm} busy={busy} act={act} onDeleted={onDeleted} />
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      <div className="action-forms">
        <MigrateForm vm={vm} busy={busy} act={act} />
        <VolumesForm vm={vm} busy={busy} act={act} />
        <fieldset>
          <legend>Post-copy policy</legend>
          <label className="inline">
            <input type="checkbox" checked={vm.allowPostcopy} disabled={busy} onChange={(event) => setPostcopy(event.target.checked)} /> Live migration may use
            post-copy
          </label>
        </fieldset>
      </div>
    </section>
  );
}
