/**
 * Desktop pools in a browser, on a real Nubis (`nubis up`, real QEMU desktops cloned on a real
 * storage node, as test/cluster/desktop-pools.test.ts boots them): Alice and Bob, users with no
 * role but a grant of the floating pool `office`, each sign in and get their own desktop from
 * "My desktops"; the page sends them on to their desktop's screen. Alice writes a marker onto her
 * desktop's disk through its serial console, opened with a ticket of her own (no vm.console), and
 * leaves from the page; her desktop is reset. Bob leaves too and gets a desktop again: Alice's old
 * one, on which her marker is gone. The admin's pool page shows the desktops and who holds them,
 * a user without a grant is told so, and a full pool refuses with the API's sentence. Screenshots
 * of the pages go to docs/screenshots/.
 */
import assert from 'node:assert/strict';
import { mkdirSync, truncateSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import type { DesktopPool } from '../../src/wire/desktop-schemas.ts';
import { NubisInstance, runOnConsole } from '../helpers/nubis-instance.ts';
import { CHROMIUM, CHROMIUM_FLAGS, skipReason } from './console-fixture.ts';

const SCREENSHOTS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs', 'screenshots');
const USERS = ['alice', 'bob', 'carol'] as const;
const password = (user: string) => `${user}-desktop-password-1`;

describe('desktop pools in a browser, on real desktops', { skip: skipReason() }, () => {
  const nubis = new NubisInstance('desktops-web');
  const tokens = new Map<string, string>();
  let browser: Browser;
  const contexts: BrowserContext[] = [];

  before(async () => {
    mkdirSync(SCREENSHOTS, { recursive: true });
    await nubis.up();
    const device = join(nubis.dataDir, 'desktop-member.img');
    writeFileSync(device, '');
    truncateSync(device, 256 * 2 ** 20);
    await nubis.cliJson(['pool', 'create', 'p1', '--layout', 'raid0', '--device', device]);
    await nubis.cliJson(['volume', 'create', 'base', '--pool', 'p1', '--size', '16M']);
    for (const user of USERS) {
      const created = await nubis.cli(['user', 'create', user, '--password-stdin'], { input: `${password(user)}\n` });
      assert.equal(created.code, 0, created.stderr);
      const login = await nubis.api<{ secret: string }>('POST', '/v1/auth/login', { user, password: password(user) }, null);
      assert.equal(login.status, 200);
      tokens.set(user, login.body.secret);
    }
    // The admin signs in with a password too: a user of their own holding the platform admin role.
    const admin = await nubis.cli(['user', 'create', 'ada', '--password-stdin'], { input: `${password('ada')}\n` });
    assert.equal(admin.code, 0, admin.stderr);
    await nubis.cliJson(['role', 'grant', 'ada', 'admin']);
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS });
  });
  after(async () => {
    for (const context of contexts) await context.close().catch(() => undefined);
    await browser?.close();
    await nubis.destroy();
  });

  /** A fresh browser (its own cookies) with `user` signed in, on My desktops. */
  async function signedIn(user: string): Promise<Page> {
    const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
    contexts.push(context);
    const page = await context.newPage();
    await page.goto(nubis.url);
    await page.getByLabel('User', { exact: true }).fill(user);
    await page.getByLabel('Password', { exact: true }).fill(password(user));
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.getByRole('link', { name: 'My desktops' }).click();
    await page.getByRole('heading', { name: 'My desktops' }).waitFor();
    return page;
  }

  /** Clicks "Get a desktop" in pool office and waits for the page to send the user on to the screen; the desktop's VM. */
  async function getDesktop(page: Page): Promise<string> {
    const card = page.getByRole('region', { name: 'Desktop pool office' });
    await card.getByRole('button', { name: /Get a desktop|Open my desktop/ }).click();
    await page.waitForURL(/\/vms\/default\/office-\d+\/screen$/, { timeout: 600_000 });
    return /\/vms\/default\/(office-\d+)\/screen$/.exec(page.url())![1]!;
  }

  /** The first 10 bytes of the desktop's disk as its guest reads them, through a serial console `user` opens with a ticket. */
  async function diskStart(user: string, vm: string): Promise<string> {
    const output = await runOnConsole(nubis, vm, "echo 3 > /proc/sys/vm/drop_caches; echo disk=[$(head -c 10 /dev/vda | tr -c 'a-z0-9-' '.')]", {
      timeoutMs: 180_000,
      viaTicket: true,
      token: tokens.get(user)!,
    });
    const match = /disk=\[([^\]]*)\]/.exec(output.slice(output.lastIndexOf('disk=[')));
    assert.ok(match, `no disk line in ${JSON.stringify(output.slice(-300))}`);
    return match[1]!;
  }

  const showPool = () => nubis.cliJson<DesktopPool>(['desktop', 'pool', 'show', 'office']);

  async function waitUntil(what: string, check: () => Promise<boolean>, timeoutMs = 600_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > end) throw new Error(`${what}: not within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  it("gives two users their own desktops, and a later user of Alice's desktop none of her files", { timeout: 1_800_000 }, async () => {
    const adminPage = await signedIn('ada');
    await adminPage.getByRole('link', { name: 'New desktop pool' }).click();
    const form = adminPage.getByRole('form', { name: 'Create a desktop pool' });
    await form.waitFor();
    await adminPage.locator('[data-field="name"] input').fill('office');
    await adminPage.locator('[data-field="base"] input').fill('p1/base');
    await adminPage.locator('[data-field="size"] input').fill('2');
    await adminPage.locator('[data-field="spare"] input').fill('0');
    await adminPage.locator('[data-field="memoryMb"] input').fill('128');
    await adminPage.screenshot({ path: join(SCREENSHOTS, 'desktop-pool-create.png'), fullPage: true });
    await form.getByRole('button', { name: 'Create' }).click();
    await adminPage.waitForURL(/\/desktops\/pools\/default\/office$/);
    const grants = adminPage.getByRole('form', { name: 'Grant the pool' });
    for (const user of ['alice', 'bob']) {
      await grants.getByLabel('User, or group:NAME').fill(user);
      await grants.getByRole('button', { name: 'Grant' }).click();
      await adminPage.getByRole('region', { name: 'Who may use it' }).getByText(user, { exact: true }).waitFor();
    }

    const carol = await signedIn('carol');
    await carol.getByText('No desktop pool is granted to you').waitFor();

    const alice = await signedIn('alice');
    await alice.getByRole('region', { name: 'Desktop pool office' }).getByText('You hold no desktop of this pool.').waitFor();
    await alice.screenshot({ path: join(SCREENSHOTS, 'my-desktops.png'), fullPage: true });
    const alices = await getDesktop(alice);
    const bob = await signedIn('bob');
    const bobs = await getDesktop(bob);
    assert.notEqual(bobs, alices, 'each their own desktop');

    await runOnConsole(nubis, alices, "printf 'alice-%s-x' $((40+2)) > /dev/vda; sync", { timeoutMs: 180_000, viaTicket: true, token: tokens.get('alice')! });
    assert.equal(await diskStart('alice', alices), 'alice-42-x', 'the marker is on her disk');
    await assert.rejects(diskStart('bob', alices), /No console ticket.*403/, "Bob cannot open Alice's desktop");

    await adminPage.reload();
    const rows = adminPage.getByRole('region', { name: 'Desktops' }).getByRole('row');
    await rows.filter({ hasText: alices }).filter({ hasText: 'alice' }).waitFor();
    await rows.filter({ hasText: bobs }).filter({ hasText: 'bob' }).waitFor();
    await adminPage.screenshot({ path: join(SCREENSHOTS, 'desktop-pool.png'), fullPage: true });

    // A full pool is refused with the API's sentence.
    await nubis.cliJson(['desktop', 'pool', 'grant', 'office', 'carol']);
    await carol.reload();
    await carol.getByRole('region', { name: 'Desktop pool office' }).getByRole('button', { name: 'Get a desktop' }).click();
    await carol.getByRole('alert').filter({ hasText: 'Desktop pool office is full: all 2 desktops are in use' }).waitFor();
    await carol.screenshot({ path: join(SCREENSHOTS, 'my-desktops-full.png'), fullPage: true });
    assert.equal(await carol.getByRole('region', { name: 'Desktop pools' }).count(), 0, 'a user without a role is shown no pools to manage');

    for (const [page, vm] of [
      [alice, alices],
      [bob, bobs],
    ] as const) {
      await page.goto(`${nubis.url}/desktops`);
      const card = page.getByRole('region', { name: 'Desktop pool office' });
      await card.getByText(`Your desktop ${vm}`).waitFor();
      await card.getByRole('button', { name: 'Leave' }).click();
      await card.getByText('You hold no desktop of this pool.').waitFor();
    }
    await waitUntil('both desktops reset and running again', async () => {
      const pool = await showPool();
      return pool.desktops.length === 2 && pool.desktops.every((d) => d.state === 'running' && !d.assignedTo);
    });

    await bob.goto(`${nubis.url}/desktops`);
    const again = await getDesktop(bob);
    assert.equal(again, alices, "Bob now holds Alice's old desktop (the first free running one)");
    const seen = await diskStart('bob', again);
    assert.notEqual(seen, 'alice-42-x', "Alice's marker is gone");
    assert.equal(seen, '..........', 'the base is blank: the fresh clone is too');
  });
});
