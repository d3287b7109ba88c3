/**
 * The VMs of the overview as a virtualized list (@tanstack/react-virtual): only the rows in view
 * are in the page, so a thousand VMs scroll as smoothly as ten. Each row is a link to the VM's
 * page, reached by Tab; a filter narrows by name, host, state or address.
 */
import { useVirtualizer } from '@tanstack/react-virtual';
import { useMemo, useRef, useState } from 'react';
import { Link } from 'wouter';
import type { Vm } from '../api/client';

const ROW_HEIGHT_PX = 52;

function addressesOf(vm: Vm): string {
  const addresses = new Set([...vm.nics.map((nic) => nic.ip), ...vm.guestIps]);
  return [...addresses].join(', ') || '—';
}

export function VmList({ vms }: { vms: Vm[] }) {
  const [filter, setFilter] = useState('');
  const shown = useMemo(() => {
    const needle = filter.trim().toLowerCase();
    const sorted = [...vms].sort((a, b) => a.project.localeCompare(b.project) || a.name.localeCompare(b.name));
    if (!needle) return sorted;
    return sorted.filter((vm) => [vm.name, vm.project, vm.host, vm.state, addressesOf(vm)].some((text) => text.toLowerCase().includes(needle)));
  }, [vms, filter]);
  const scroller = useRef<HTMLDivElement>(null);
  const virtualizer = useVirtualizer({ count: shown.length, getScrollElement: () => scroller.current, estimateSize: () => ROW_HEIGHT_PX, overscan: 8 });
  return (
    <div className="vm-list">
      <label className="filter">
        Filter
        <input type="search" value={filter} onChange={(event) => setFilter(event.target.value)} placeholder="name, host, state or address" />
      </label>
      <p className="count" aria-live="polite">
        {shown.length === vms.length ? `${vms.length} VMs` : `${shown.length} of ${vms.length} VMs`}
      </p>
      <div className="vm-row vm-head" aria-hidden="true">
        <span>Name</span>
        <span>State</span>
        <span>Host</span>
        <span>Addresses</span>
      </div>
      <div ref={scroller} className="vm-scroller" data-testid="vm-scroller">
        <ul style={{ height: virtualizer.getTotalSize() }} aria-label="Virtual machines">
          {virtualizer.getVirtualItems().map((row) => {
            const vm = shown[row.index];
            return (
              <li key={vm.id} style={{ transform: `translateY(${row.start}px)`, height: ROW_HEIGHT_PX }}>
                <Link href={`/vms/${vm.project}/${vm.name}`} className="vm-row" data-vm={vm.name}>
                  <span className="vm-name">
                    {vm.name} <span className="project">{vm.project}</span>
                  </span>
                  <span className={`state state-${vm.state}`}>{vm.state}</span>
                  <span className="vm-host">{vm.host || '—'}</span>
                  <span className="vm-addresses">{addressesOf(vm)}</span>
                </Link>
              </li>
            );
          })}
        </ul>
      </div>
    </div>
  );
}
