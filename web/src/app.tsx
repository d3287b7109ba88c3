/**
 * The web console's shell: who is signed in (the cookie session, asked of /v1/auth/whoami), the
 * login page when nobody is, and the pages by path. The control plane answers every non-API path
 * with index.html, so these paths can be bookmarked and reloaded.
 */
import { lazy, Suspense, useCallback, useEffect, useState } from 'react';
import { Link, Route, Switch } from 'wouter';
import { onSignedOut } from './api/client';
import { signOut, type WhoAmI, whoAmI } from './api/session';
import { DesktopPoolPage } from './pages/desktop-pool';
import { DesktopPoolCreatePage } from './pages/desktop-pool-create';
import { LoginPage } from './pages/login';
import { MyDesktopsPage } from './pages/my-desktops';
import { OverviewPage } from './pages/overview';
import { VmCreatePage } from './pages/vm-create';
import { HostPage } from './pages/host';
import { OperationPage } from './pages/operation';
import { PoolPage } from './pages/pool';
import { VmPage } from './pages/vm';

// noVNC and xterm.js load only with the console pages: the overview stays small.
const VmScreenPage = lazy(() => import('./pages/vm-screen').then((module) => ({ default: module.VmScreenPage })));
const VmSerialPage = lazy(() => import('./pages/vm-screen').then((module) => ({ default: module.VmSerialPage })));

export function App() {
  const [who, setWho] = useState<WhoAmI | null>();
  const [failure, setFailure] = useState<string>();
  const check = useCallback(() => {
    whoAmI().then(
      (found) => setWho(found ?? null),
      (error: unknown) => setFailure(error instanceof Error ? error.message : String(error)),
    );
  }, []);
  useEffect(check, [check]);
  useEffect(() => onSignedOut(() => setWho(null)), []);
  if (failure)
    return (
      <main className="page">
        <p role="alert">The control plane did not answer: {failure}</p>
      </main>
    );
  if (who === undefined) return <main className="page" aria-busy="true" />;
  if (who === null) return <LoginPage onSignedIn={check} />;
  return (
    <>
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <header className="top-bar">
        <Link href="/" className="brand">
          Nubis
        </Link>
        <nav aria-label="Main">
          <Link href="/">Overview</Link>
          <Link href="/vms/new">New VM</Link>
          <Link href="/desktops">My desktops</Link>
        </nav>
        <span className="who" title={`Signed in with ${who.token}`}>
          {who.user}
        </span>
        <button type="button" onClick={() => void signOut().finally(() => setWho(null))}>
          Sign out
        </button>
      </header>
      <main id="main" className="page">
        <Suspense fallback={<p aria-busy="true">Loading…</p>}>
          <Switch>
            <Route path="/" component={OverviewPage} />
            <Route path="/vms/new" component={VmCreatePage} />
            <Route path="/desktops">{() => <MyDesktopsPage />}</Route>
            <Route path="/desktops/pools/new" component={DesktopPoolCreatePage} />
            <Route path="/desktops/pools/:project/:name">{(params) => <DesktopPoolPage project={params.project} name={params.name} />}</Route>
            {/* What nubis desktop connect prints: the same page, that pool's card first. */}
            <Route path="/desktops/:pool">{(params) => <MyDesktopsPage first={params.pool} />}</Route>
            <Route path="/vms/:project/:name/screen">{(params) => <VmScreenPage project={params.project} name={params.name} />}</Route>
            <Route path="/vms/:project/:name/serial">{(params) => <VmSerialPage project={params.project} name={params.name} />}</Route>
            <Route path="/hosts/:name">{(params) => <HostPage name={params.name} />}</Route>
            <Route path="/pools/:name">{(params) => <PoolPage name={params.name} />}</Route>
            <Route path="/operations/:id">{(params) => <OperationPage id={params.id} />}</Route>
            <Route path="/vms/:project/:name">{(params) => <VmPage project={params.project} name={params.name} />}</Route>
            <Route>
              <h1>Not found</h1>
              <p>
                No page here. <Link href="/">Back to the overview</Link>
              </p>
            </Route>
          </Switch>
        </Suspense>
      </main>
    </>
  );
}
