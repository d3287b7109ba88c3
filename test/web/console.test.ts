/**
 * The web console in a real browser (Debian's Chromium, headless, driven by playwright-core)
 * against the control plane's API over a fake cluster: signing in (the session only in an
 * HttpOnly cookie), the overview, creating a VM from the form built from the API's schema (a
 * refused value shown beside its field first), a change made elsewhere showing without a reload,
 * 1,000 VMs at phone width, and the main flows by keyboard alone. The run saves screenshots of
 * the main pages to docs/screenshots/ for the README.
 */
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import type { Page } from 'playwright-core';
import { addSimulatedVms, type ConsoleFixture, PASSWORD, skipReason, startConsoleFixture, USER } from './console-fixture.ts';

const SCREENSHOTS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs', 'screenshots');
const SIMULATED_VMS = 1000;

/** Presses Tab until the focused element matches `selector` (and has the text `text`); fails after `limit` presses. */
async function tabTo(page: Page, selector: string, text?: string, limit = 60): Promise<void> {
  for (let press = 0; press < limit; press++) {
    await page.keyboard.press('Tab');
    const reached = await page.evaluate(
      ([wanted, label]) => (document.activeElement?.matches(wanted) ?? false) && (label === undefined || document.activeElement?.textContent?.trim() === label),
      [selector, text] as const,
    );
    if (reached) return;
  }
  throw new Error(`${limit} presses of Tab never reached ${selector} ${text ?? ''}`);
}

async function signIn(page: Page, url: string): Promise<void> {
  await page.goto(url);
  await page.getByLabel('User', { exact: true }).fill(USER);
  await page.getByLabel('Password', { exact: true }).fill(PASSWORD);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
}

describe('web console in a browser', { skip: skipReason() }, () => {
  let fixture: ConsoleFixture;
  let page: Page;

  before(async () => {
    mkdirSync(SCREENSHOTS, { recursive: true });
    fixture = await startConsoleFixture();
    page = await fixture.browser.newPage();
  });
  after(() => fixture?.close());

  it('signs in with a password into an HttpOnly cookie, nothing in storage, and shows hosts and VMs', async () => {
    await page.goto(fixture.url);
    await page.getByRole('button', { name: 'Sign in', exact: true }).waitFor();
    await page.screenshot({ path: join(SCREENSHOTS, 'login.png') });
    await page.getByLabel('User', { exact: true }).fill(USER);
    await page.getByLabel('Password', { exact: true }).fill('not-the-password');
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.getByRole('alert').filter({ hasText: 'Wrong user name or password' }).waitFor();
    await page.getByLabel('Password', { exact: true }).fill(PASSWORD);
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    const hosts = page.locator('.host');
    await hosts.first().waitFor();
    assert.deepEqual(await page.locator('.host-title strong').allTextContents(), ['h1', 'h2']);
    assert.match((await hosts.first().getByText('CPU').textContent()) ?? '', /1 vCPU \/ 16 vCPU/, 'web1 takes one of h1 or h2');
    await page.locator('[data-vm="web1"]').waitFor();
    const cookies = await fixture.browser.cookies(fixture.url);
    assert.deepEqual(
      cookies.map((cookie) => [cookie.name, cookie.httpOnly, cookie.sameSite, cookie.path]),
      [['nubis_session', true, 'Strict', '/']],
    );
    assert.equal(await page.evaluate(() => document.cookie), '', 'no script can read the session');
    assert.equal(await page.evaluate(() => localStorage.length + sessionStorage.length), 0);
    await page.screenshot({ path: join(SCREENSHOTS, 'overview.png'), fullPage: true });
  });

  it('says whether updates are live: the event stream when the control plane has it, else a refresh it names', async () => {
    const stream = await page.evaluate(async () => (await fetch('/v1/events', { method: 'HEAD' })).status);
    const indicator = page.locator('[data-live]');
    if (stream === 404) await page.getByText('Live updates unavailable: refreshing every 5 s').waitFor();
    else await page.locator('[data-live="live"]').waitFor();
    assert.ok(await indicator.isVisible());
  });

  it('applies the event stream as the contract states it: a change updates the list in place, a reset refetches', async () => {
    // The stream (GET /v1/events) is served here by the test, in the contract's format, with the
    // resource as GET /v1/vms/{vm} shows it but crashed: what the page makes of the messages is
    // under test, not the control plane's stream.
    const web1 = (await fixture.cluster.services.vms.get('web1', 'default')) as unknown as Record<string, unknown>;
    const message = { seq: 1, time: new Date().toISOString(), type: 'vm', action: 'updated', id: web1.id, name: 'web1', project: 'default' };
    const bodies = [
      `retry: 500\nid: 1-1\nevent: change\ndata: ${JSON.stringify({ ...message, resource: { ...web1, state: 'crashed' } })}\n\n`,
      `retry: 500\nid: 2-1\nevent: reset\ndata: ${JSON.stringify({ reason: 'The control plane restarted' })}\n\n`,
    ];
    let served = 0;
    await page.route('**/v1/events*', (route) =>
      route.fulfill({ status: 200, headers: { 'content-type': 'text/event-stream' }, body: bodies[Math.min(served++, bodies.length - 1)] }),
    );
    try {
      await page.goto(fixture.url);
      await page.locator('[data-vm="web1"] .state', { hasText: 'crashed' }).waitFor({ timeout: 10_000 });
      await page.locator('[data-vm="web1"] .state', { hasText: 'running' }).waitFor({ timeout: 10_000 });
      assert.ok(served >= 2, 'the page reconnected after the stream ended');
    } finally {
      await page.unroute('**/v1/events*');
    }
  });

  it('creates a VM from the form built from the API schema: a refused name shows beside its field, then the VM page follows it', async () => {
    await page.getByRole('link', { name: 'New VM' }).click();
    const name = page.locator('[data-field="name"] input');
    await name.fill('Web_2');
    await page.getByRole('button', { name: 'Create' }).click();
    const fieldError = page.locator('[data-field="name"] .error');
    await fieldError.waitFor();
    assert.match((await fieldError.textContent()) ?? '', /Invalid body\.name "Web_2"/);
    assert.equal(await name.getAttribute('aria-invalid'), 'true');
    await page.screenshot({ path: join(SCREENSHOTS, 'vm-create.png'), fullPage: true });
    await name.fill('web2');
    await page.locator('[data-field="memoryMb"] input').fill('128');
    await page.getByRole('button', { name: 'Create' }).click();
    await page.waitForURL(`${fixture.url}/vms/default/web2`);
    await page.locator('[data-testid="vm-state"]', { hasText: 'running' }).waitFor({ timeout: 20_000 });
    const vm = await fixture.cluster.services.vms.get('web2', 'default');
    assert.equal(vm.memoryMb, 128, 'the form sent what was typed');
  });

  it('shows a change made elsewhere without reloading the page', async () => {
    await page.evaluate(() => {
      (window as unknown as { notReloaded: boolean }).notReloaded = true;
    });
    const paused = await fixture.cluster.services.vms.act('web2', 'pause', { project: 'default' });
    await fixture.cluster.services.operations.wait(paused.id);
    await page.locator('[data-testid="vm-state"]', { hasText: 'paused' }).waitFor({ timeout: 15_000 });
    assert.equal(await page.evaluate(() => (window as unknown as { notReloaded?: boolean }).notReloaded), true, 'the page was not reloaded');
  });

  it('acts on the VM from its page: post-copy policy, a refused volume with the API message, a migration with its history', async () => {
    await page.goto(`${fixture.url}/vms/default/web2`);
    await page.locator('[data-testid="vm-state"]').waitFor();
    const postcopy = page.getByLabel('Live migration may use post-copy');
    assert.equal(await postcopy.isChecked(), true);
    await postcopy.click();
    await page.getByText('not allowed').waitFor();
    assert.equal((await fixture.cluster.services.vms.get('web2', 'default')).allowPostcopy, false);
    await postcopy.click();
    await page.getByText('allowed', { exact: true }).waitFor();
    await page.getByLabel('Volume (POOL/VOLUME)').fill('nopool/vol1');
    await page.getByRole('button', { name: 'Attach' }).click();
    // Refused at once (the pool is unknown) or by its operation (this fake cluster has no storage node): the API's message shows.
    const refusal = page.locator('.card [role="alert"], section[aria-label="Last action"] .error').first();
    await refusal.waitFor({ timeout: 20_000 });
    assert.match((await refusal.textContent()) ?? '', /nopool|storage node/i);
    // Only a running VM migrates live: web2 was paused by the test before.
    await page.getByRole('button', { name: 'Resume' }).click();
    await page.locator('[data-testid="vm-state"]', { hasText: 'running' }).waitFor({ timeout: 15_000 });
    await page.getByRole('button', { name: 'Migrate' }).click();
    await page.locator('.card [role="alert"]', { hasText: 'user-mode networking' }).waitFor();
    // A VM on a virtual network keeps its address on another host: it migrates.
    const { services } = fixture.cluster;
    await services.networks.create({ name: 'net1', subnet: '10.80.0.0/24', dhcp: false, nat: false, project: 'default' });
    const created = await services.vms.create({
      name: 'mig1',
      image: 'tiny',
      cpus: 1,
      memoryMb: 128,
      project: 'default',
      networks: [{ network: 'net1' }],
      waitReady: false,
    });
    await services.operations.wait(created.id);
    const from = (await services.vms.get('mig1', 'default')).host;
    const to = from === 'h1' ? 'h2' : 'h1';
    await page.goto(`${fixture.url}/vms/default/mig1`);
    await page.getByLabel('Strategy').selectOption('precopy');
    await page.getByLabel('Target host').selectOption(to);
    await page.getByRole('button', { name: 'Migrate' }).click();
    // A migration shows as it runs, from its operation's event stream.
    await page.locator('.migration-live .stages li').first().waitFor();
    await page.getByRole('cell', { name: `${from} → ${to}` }).waitFor({ timeout: 20_000 });
    await page.locator('.facts dd', { hasText: new RegExp(`^${to}$`) }).waitFor({ timeout: 20_000 });
    await page.screenshot({ path: join(SCREENSHOTS, 'vm.png'), fullPage: true });
  });

  it('works by keyboard alone: find a VM, open it, resume it, sign out and in again', async () => {
    await page.goto(fixture.url);
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    const paused = await fixture.cluster.services.vms.act('web2', 'pause', { project: 'default' });
    await fixture.cluster.services.operations.wait(paused.id);
    await tabTo(page, 'input[type="search"]');
    await page.keyboard.type('web2');
    await tabTo(page, 'a[data-vm="web2"]', undefined, 5);
    await page.keyboard.press('Enter');
    await page.waitForURL(`${fixture.url}/vms/default/web2`);
    await page.locator('[data-testid="vm-state"]', { hasText: 'paused' }).waitFor();
    await tabTo(page, 'button', 'Resume');
    await page.keyboard.press('Enter');
    await page.locator('[data-testid="vm-state"]', { hasText: 'running' }).waitFor({ timeout: 15_000 });
    await page.goto(`${fixture.url}/`);
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    await tabTo(page, 'button', 'Sign out');
    await page.keyboard.press('Enter');
    await page.getByRole('button', { name: 'Sign in', exact: true }).waitFor();
    assert.deepEqual(await fixture.browser.cookies(fixture.url), [], 'signing out clears the cookie');
    await tabTo(page, 'input[name="user"]');
    await page.keyboard.type(USER);
    await page.keyboard.press('Tab');
    await page.keyboard.type(PASSWORD);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
  });

  it('signs in with an API token exchanged for a cookie session, the token not kept by the page', async () => {
    const context = await fixture.browser.browser()?.newContext();
    const other = context ? await context.newPage() : await fixture.browser.newPage();
    await fixture.browser.clearCookies();
    await other.goto(fixture.url);
    await other.getByText('Sign in with an API token').click();
    await other.getByLabel('Token', { exact: true }).fill(fixture.cluster.token);
    await other.getByRole('button', { name: 'Sign in with token' }).click();
    await other.getByRole('heading', { name: 'Overview' }).waitFor();
    const cookies = await other.context().cookies(fixture.url);
    assert.equal(cookies.length, 1);
    assert.notEqual(cookies[0].value, fixture.cluster.token, 'a session of its own, not the token');
    assert.equal(await other.evaluate(() => localStorage.length + sessionStorage.length), 0);
    await other.close();
    await signIn(page, fixture.url);
  });

  it(`lists ${SIMULATED_VMS} VMs at 390 px wide: a few rows in the page, every one reachable, nothing wider than the screen`, async () => {
    await addSimulatedVms(fixture.cluster, 0, SIMULATED_VMS);
    const total = (await fixture.cluster.services.vms.counts()).vms;
    assert.ok(total > SIMULATED_VMS);
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(fixture.url);
    await page.getByText(`${total} VMs`).waitFor({ timeout: 20_000 });
    const rows = await page.locator('[data-testid="vm-scroller"] li').count();
    assert.ok(rows > 5 && rows < 60, `${rows} rows in the page: the list is virtualized`);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `the page is ${overflow} px wider than the screen`);
    await page.screenshot({ path: join(SCREENSHOTS, 'overview-390px.png'), fullPage: true });
    await page.locator('[data-testid="vm-scroller"]').evaluate((scroller) => scroller.scrollTo(0, scroller.scrollHeight));
    await page.locator(`[data-vm="sim-${String(SIMULATED_VMS - 1).padStart(4, '0')}"]`).waitFor();
    await page.getByLabel('Filter').fill('sim-0777');
    await page.getByText(`1 of ${total} VMs`).waitFor();
    await page.setViewportSize({ width: 1280, height: 720 });
    await page.getByLabel('Filter').fill('');
    await page.screenshot({ path: join(SCREENSHOTS, 'overview-1000-vms.png') });
  });
});
