/**
 * The web console's screen, serial console, graphs and live migration in a real browser (Debian's
 * Chromium, headless, driven by playwright-core) against a real Nubis: `nubis up --hosts 2` (two
 * host agents in network namespaces) and one tiny QEMU VM shared by every test of this file. The
 * screen is noVNC over a console ticket's WebSocket; the serial console is xterm.js; the VM is
 * migrated from its page and both consoles follow it to its new host. Screenshots of the new
 * pages go to docs/screenshots/ for the README.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import { WEB_DIST_DIR } from '../../src/api/web-console.ts';
import type { Operation, Vm } from '../../src/wire/schemas.ts';
import { NubisInstance } from '../helpers/nubis-instance.ts';
import { CHROMIUM, CHROMIUM_FLAGS, skipReason } from './console-fixture.ts';

const SCREENSHOTS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs', 'screenshots');
const VM = 'screen1';
const VM_PAGE = `/vms/default/${VM}`;

function skip(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root: nubis up --hosts 2 puts its hosts in network namespaces';
  if (!existsSync(join(WEB_DIST_DIR, 'index.html'))) return `${WEB_DIST_DIR} is not built: run npm run build:web`;
  return skipReason();
}

const SCREEN_CANVAS = '[data-testid="vnc-screen"] canvas';

/** Keeps the screen's current pixels in the page, to compare later; answers how many colours it has. */
function snapshotScreen(page: Page): Promise<number> {
  return page.evaluate((selector) => {
    const canvas = document.querySelector<HTMLCanvasElement>(selector);
    if (!canvas?.width) return 0;
    const pixels = new Uint32Array(canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data.buffer);
    (window as unknown as { nubisSnapshot: Uint32Array }).nubisSnapshot = pixels;
    return new Set(pixels).size;
  }, SCREEN_CANVAS);
}

/** How many pixels of the screen differ from the last snapshot. */
function pixelsChanged(page: Page): Promise<number> {
  return page.evaluate((selector) => {
    const canvas = document.querySelector<HTMLCanvasElement>(selector)!;
    const now = new Uint32Array(canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data.buffer);
    const before = (window as unknown as { nubisSnapshot: Uint32Array }).nubisSnapshot;
    if (before.length !== now.length) return now.length;
    let count = 0;
    for (let i = 0; i < now.length; i++) if (now[i] !== before[i]) count++;
    return count;
  }, SCREEN_CANVAS);
}

/** Waits until `probe` answers at least `wanted`; returns the last answer. */
async function waitAtLeast(probe: () => Promise<number>, wanted: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let value = await probe();
  while (value < wanted && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    value = await probe();
  }
  return value;
}

/** What the page's content security policy refused, as `directive blocked-uri`. */
const cspViolations = (page: Page) => page.evaluate(() => (window as unknown as { cspViolations: string[] }).cspViolations);

/** The serial console page's terminal text, one line per row. */
const terminalText = async (page: Page) => (await page.locator('.xterm-rows > div').allTextContents()).join('\n');

/** Types `command` into the serial console page once the shell shows a prompt; resolves when `expected` appears. */
async function typeOnSerial(page: Page, command: string, expected: RegExp, timeoutMs = 60_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  await page.locator('[data-console-state="connected"]').waitFor({ timeout: timeoutMs });
  await page.locator('[data-testid="serial-terminal"]').click();
  // A command typed while the shell starts is flushed: wake it with Enter until it prompts.
  while (!/[#$]\s*$/.test(await terminalText(page))) {
    if (Date.now() > deadline) throw new Error(`No prompt on the serial console page: ${await terminalText(page)}`);
    await page.keyboard.press('Enter');
    await page.waitForTimeout(500);
  }
  await page.keyboard.type(command);
  await page.keyboard.press('Enter');
  while (!expected.test(await terminalText(page))) {
    if (Date.now() > deadline) throw new Error(`${expected} never appeared on the serial console page: ${await terminalText(page)}`);
    await page.waitForTimeout(200);
  }
  return terminalText(page);
}

describe('web console: screen, serial console, graphs and a live migration with a real VM', { skip: skip() }, () => {
  const nubis = new NubisInstance('webscreen');
  const profile = mkdtempSync(join(tmpdir(), `nubis-webscreen-chromium-${process.pid}-`));
  let browser: BrowserContext;
  let screen: Page;
  let serial: Page;

  before(async () => {
    mkdirSync(SCREENSHOTS, { recursive: true });
    await nubis.up(['--hosts', '2']);
    // On a virtual network: a user-mode NIC could not keep its address on the other host.
    await nubis.cliJson(['network', 'create', 'webnet', '--subnet', '10.93.0.0/24']);
    const created = await nubis.api<{ operation: Operation }>('POST', '/v1/vms', {
      name: VM,
      image: 'tiny',
      cpus: 1,
      memoryMb: 256,
      networks: [{ network: 'webnet' }],
    });
    assert.equal(created.status, 202, JSON.stringify(created.body));
    const operation = await nubis.waitOperation(created.body.operation.id);
    assert.equal(operation.status, 'succeeded', operation.error?.message);
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_FLAGS,
      viewport: { width: 1280, height: 800 },
    });
    // The admin's token, typed once on the login page, becomes the session cookie of this profile.
    const login = await browser.newPage();
    await login.goto(nubis.url);
    await login.getByText('Sign in with an API token').click();
    await login.getByLabel('Token', { exact: true }).fill(nubis.token);
    await login.getByRole('button', { name: 'Sign in with token' }).click();
    await login.getByRole('heading', { name: 'Overview' }).waitFor();
    await login.close();
    // Every breach of the content security policy is kept, to check what the consoles need of it.
    await browser.addInitScript(() => {
      const seen: string[] = [];
      (window as unknown as { cspViolations: string[] }).cspViolations = seen;
      document.addEventListener('securitypolicyviolation', (event) => seen.push(`${event.effectiveDirective} ${event.blockedURI}`));
    });
  });
  after(async () => {
    await browser?.close();
    await nubis.destroy();
    rmSync(profile, { recursive: true, force: true });
  });

  it("opens the VM's screen from the VM page's Screen button: not blank, and it changes when the guest prints", async () => {
    screen = await browser.newPage();
    await screen.goto(`${nubis.url}${VM_PAGE}`);
    await screen.getByRole('link', { name: 'Screen', exact: true }).click();
    await screen.locator('[data-screen-state="connected"]').waitFor({ timeout: 30_000 });
    assert.equal(new URL(screen.url()).pathname, `${VM_PAGE}/screen`);
    const colours = await waitAtLeast(() => snapshotScreen(screen), 2, 15_000);
    assert.ok(colours >= 2, `the screen shows the guest's text, not one colour (${colours})`);
    // Written on tty1 by a command typed into the serial console page: the screen must change.
    serial = await browser.newPage();
    await serial.goto(`${nubis.url}${VM_PAGE}/serial`);
    await snapshotScreen(screen);
    const line = 'NUBIS-WEB-SCREEN-'.repeat(4);
    await typeOnSerial(serial, `for i in 1 2 3 4 5 6 7 8; do echo ${line}; done > /dev/tty1; echo printed-$((40+2))`, /printed-42/);
    const changed = await waitAtLeast(() => pixelsChanged(screen), 3_000, 10_000);
    assert.ok(changed >= 3_000, `eight lines of text on tty1 changed ${changed} pixels of the screen`);
    await screen.screenshot({ path: join(SCREENSHOTS, 'screen.png') });
    assert.deepEqual(await cspViolations(screen), [], 'noVNC works within the policy: its WebSocket, canvas and script are allowed');
  });

  it('answers on the serial console page what is typed there', async () => {
    const text = await typeOnSerial(serial, 'echo serial-$((6*7)); uname -s', /serial-42\s*\n\s*Linux/);
    assert.match(text, /serial-42/);
    await serial.screenshot({ path: join(SCREENSHOTS, 'serial.png') });
    // xterm.js writes its sizes and colours into <style> elements, which `style-src 'self'`
    // blocks: they are the only breaches, and the sheet adopted in their place lays the rows out.
    const breaches = await cspViolations(serial);
    assert.ok(
      breaches.every((breach) => breach === 'style-src-elem inline'),
      breaches.join('; '),
    );
    const rowHeights = await serial.locator('.xterm-rows > div').evaluateAll((rows) => rows.slice(0, 5).map((row) => row.getBoundingClientRect().height));
    assert.ok(new Set(rowHeights).size === 1 && rowHeights[0] > 10, `rows of one height from xterm's sheet (${rowHeights})`);
  });

  it('sends the keys typed on the screen to the guest: a command typed into its shell there is seen from the serial console page', async () => {
    // The screen shows the guest's shell on tty1, which has the keyboard. Only unshifted keys:
    // noVNC sends QEMU scan codes, and Playwright types shifted characters without Shift held.
    await screen.locator(SCREEN_CANVAS).click();
    await screen.keyboard.type('touch /tmp/typed-on-screen-42');
    await screen.keyboard.press('Enter');
    // The serial console's shell waits for the file the screen's shell made: no race with the typing.
    await serial.locator('[data-testid="serial-terminal"]').click();
    await serial.keyboard.type('until test -e /tmp/typed-on-screen-42; do sleep 1; done; echo "seen-$((40 + 2))"');
    await serial.keyboard.press('Enter');
    await serial.waitForFunction(
      () => Array.from(document.querySelectorAll('.xterm-rows > div'), (row) => row.textContent).some((text) => text?.includes('seen-42')),
      undefined,
      { timeout: 30_000 },
    );
  });

  it('shows the screen to a page that may not read the VM (a desktop user): nothing but the ticket is asked', async () => {
    const page = await browser.newPage();
    const readsOfVm: string[] = [];
    await page.route(
      (url) => url.pathname === `/v1/vms/${VM}`,
      (route) => {
        readsOfVm.push(route.request().method());
        return route.fulfill({ status: 403, json: { code: 'ACCESS_DENIED', message: `You may not read ${VM}` } });
      },
    );
    try {
      await page.goto(`${nubis.url}${VM_PAGE}/screen`);
      await page.locator('[data-screen-state="connected"]').waitFor({ timeout: 30_000 });
      assert.ok((await waitAtLeast(() => snapshotScreen(page), 2, 15_000)) >= 2, 'the screen shows the guest');
      assert.deepEqual(readsOfVm, [], 'the screen page never reads the VM');
    } finally {
      await page.close();
    }
  });

  it('says why when the ticket is refused', async () => {
    const page = await browser.newPage();
    await page.route('**/console-ticket*', (route) =>
      route.fulfill({ status: 403, json: { code: 'ACCESS_DENIED', message: `You may not open the console of ${VM}` } }),
    );
    try {
      await page.goto(`${nubis.url}${VM_PAGE}/screen`);
      const status = page.locator('[data-screen-state="failed"]');
      await status.waitFor();
      assert.match((await status.textContent()) ?? '', /No screen ticket: You may not open the console of screen1/);
      assert.ok(await page.getByRole('button', { name: 'Reconnect' }).isVisible());
    } finally {
      await page.close();
    }
  });

  it("shows a storage pool's members with their error counters, and a scrub started from its page as it runs", async () => {
    const devices = ['a', 'b'].map((name) => join(nubis.dataDir, `webpool-${name}.img`));
    for (const device of devices) {
      writeFileSync(device, '');
      truncateSync(device, 64 * 2 ** 20);
    }
    await nubis.cliJson(['pool', 'create', 'webpool', '--layout', 'raid1', ...devices.flatMap((device) => ['--device', device])]);
    const page = await browser.newPage();
    try {
      await page.goto(nubis.url);
      await page.getByRole('link', { name: 'webpool' }).click();
      await page.getByRole('heading', { name: 'Pool webpool' }).waitFor();
      const members = page.getByRole('region', { name: 'Members' }).locator('tbody tr');
      await members.nth(1).waitFor();
      assert.deepEqual(
        await members.evaluateAll((rows) => rows.map((row) => [...row.querySelectorAll('td')].map((cell) => cell.textContent))),
        devices.map((device, index) => [String(index), device, 'online', '0', '0', '0']),
      );
      await page.getByRole('button', { name: 'Scrub', exact: true }).click();
      const scrub = page.getByRole('region', { name: 'Scrubs and rebuilds' }).locator('[data-operation]').first();
      await scrub.locator('.state-succeeded').waitFor({ timeout: 120_000 });
      assert.match((await scrub.textContent()) ?? '', /pool\.scrub pool webpool/);
      await page.screenshot({ path: join(SCREENSHOTS, 'pool.png'), fullPage: true });
    } finally {
      await page.close();
    }
  });

  it("draws the VM's and the host's usage over the last hour and the last day", async () => {
    const page = await browser.newPage();
    try {
      await page.goto(`${nubis.url}/`);
      const vm = (await nubis.api<Vm>('GET', `/v1/vms/${VM}`)).body;
      await page.getByRole('link', { name: vm.host, exact: true }).click();
      await page.getByRole('heading', { name: `Host ${vm.host}` }).waitFor();
      const titles = () => page.locator('[data-chart]').evaluateAll((charts) => charts.map((chart) => chart.getAttribute('data-chart')));
      await page.locator('[data-usage-range="hour"] [data-chart] canvas').first().waitFor();
      assert.deepEqual(
        (await titles()).map((title) => title?.split(' ')[0]),
        ['CPU', 'Memory', 'Disk', 'Network'],
      );
      // Hosts report every 10 s: the hour has points once one report is in.
      const usage = await page.evaluate(
        async (host) => (await (await fetch(`/v1/hosts/${host}/usage?range=hour`)).json()) as { timestamps: string[]; average: { cpu: (number | null)[] } },
        vm.host,
      );
      assert.ok(usage.timestamps.length > 0, 'the hour has points');
      await page.getByLabel('Last day').check();
      await page.locator('[data-usage-range="day"] [data-chart] canvas').first().waitFor();
      await page.getByLabel('Last hour').check();
      await page.locator('[data-usage-range="hour"]').waitFor();
      await page.screenshot({ path: join(SCREENSHOTS, 'host.png'), fullPage: true });
      await page.goto(`${nubis.url}${VM_PAGE}`);
      await page.locator('[data-usage-range="hour"] [data-chart] canvas').first().waitFor();
      assert.equal(await page.locator('[data-chart]').count(), 4);
    } finally {
      await page.close();
    }
  });

  it('migrates the VM from its page, showing its stages, passes and prediction live; the open screen and serial console follow it', async () => {
    const page = await browser.newPage();
    try {
      const before = (await nubis.api<Vm>('GET', `/v1/vms/${VM}`)).body;
      await page.goto(`${nubis.url}${VM_PAGE}`);
      // The hosts arrive after the page: until then the target is a text field.
      await page.locator('select#migrate-to').waitFor();
      await page.getByLabel('Target host').selectOption({ index: 1 });
      const target = await page.getByLabel('Target host').inputValue();
      assert.notEqual(target, before.host);
      await page.getByRole('button', { name: 'Migrate', exact: true }).click();
      const live = page.locator('.migration-live');
      await live.or(page.getByRole('alert')).first().waitFor();
      assert.ok(await live.isVisible(), `the migration started: ${await page.getByRole('alert').allTextContents()}`);
      // Seen while it runs: a stage before the end.
      await live.locator('.stages li').first().waitFor();
      await page.locator('.migration-live[data-migration-status="succeeded"]').waitFor({ timeout: 180_000 });
      const stages = await live.locator('.stages li').evaluateAll((items) => items.map((item) => item.getAttribute('data-stage')));
      for (const stage of ['checks', 'plan', 'precopy', 'activation', 'done']) assert.ok(stages.includes(stage), `stage ${stage} shown (${stages.join(', ')})`);
      assert.ok((await live.locator('.passes tbody tr').count()) >= 1, 'at least one pre-copy pass');
      const outcome = live.getByRole('table', { name: 'Prediction beside the outcome' });
      assert.match((await outcome.locator('[data-outcome="total"]').textContent()) ?? '', /^\d+ ms/);
      await page.locator('[data-testid="vm-state"]', { hasText: 'running' }).waitFor();
      await page.screenshot({ path: join(SCREENSHOTS, 'migration.png'), fullPage: true });
      assert.equal((await nubis.api<Vm>('GET', `/v1/vms/${VM}`)).body.host, target);

      // The screen was closed with 4000 (moved), asked a new ticket and shows the guest again.
      await screen.locator('[data-screen-state="connected"][data-reconnects="1"]').waitFor({ timeout: 30_000 });
      await snapshotScreen(screen);
      await typeOnSerial(serial, 'echo moved-$((6*7)) > /dev/tty1; clear > /dev/tty1; echo after-$((6*7))', /after-42/);
      assert.ok((await waitAtLeast(() => pixelsChanged(screen), 1_000, 10_000)) >= 1_000, 'the reconnected screen follows the guest on its new host');
    } finally {
      await page.close();
    }
  });
  it('sends Ctrl-Alt-Del: the guest reboots (its init reboots on it) and is ready again', async () => {
    const readyLines = async () =>
      (await nubis.api<{ lines: string[] }>('GET', `/v1/vms/${VM}/log?lines=1000`)).body.lines.filter((line) => line.startsWith('NUBIS-READY')).length;
    const before = await readyLines();
    await screen.getByRole('button', { name: 'Send Ctrl-Alt-Del' }).click();
    const deadline = Date.now() + 180_000;
    while ((await readyLines()) <= before && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 1_000));
    assert.ok((await readyLines()) > before, 'a new boot printed its readiness line');
    assert.equal((await nubis.api<Vm>('GET', `/v1/vms/${VM}`)).body.state, 'running', 'a reboot, not a power-off');
  });
});
