/**
 * The VM's screen (`/vms/:project/:name/screen`) and its serial console
 * (`/vms/:project/:name/serial`) on pages of their own. Neither reads the VM: a user who may open
 * its console but not read it (a desktop-pool user) gets them all the same.
 */
import { Link } from 'wouter';
import { SerialTerminal } from '../components/serial-terminal';
import { VncScreen } from '../components/vnc-screen';

type Where = { project: string; name: string };

function ConsoleHead({ project, name, title, other }: Where & { title: string; other: 'screen' | 'serial' }) {
  const base = `/vms/${encodeURIComponent(project)}/${encodeURIComponent(name)}`;
  return (
    <div className="page-head">
      <h1>
        {title} of {name} <span className="project">{project}</span>
      </h1>
      <nav aria-label="Consoles" className="inline-links">
        <Link href={base}>VM</Link>
        <Link href={`${base}/${other}`}>{other === 'screen' ? 'Screen' : 'Serial console'}</Link>
      </nav>
    </div>
  );
}

export function VmScreenPage({ project, name }: Where) {
  return (
    <>
      <ConsoleHead project={project} name={name} title="Screen" other="serial" />
      <VncScreen project={project} name={name} />
    </>
  );
}

export function VmSerialPage({ project, name }: Where) {
  return (
    <>
      <ConsoleHead project={project} name={name} title="Serial console" other="screen" />
      <SerialTerminal project={project} name={name} />
    </>
  );
}
