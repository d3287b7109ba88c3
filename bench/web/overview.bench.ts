/**
 * The web console's overview with 1,000 VMs against 10, in one run: the same control plane (the
 * browser tests' fixture: real API and services over a fake cluster, the built console served by
 * the control plane) and Debian's Chromium, headless. Each load is a fresh page: from
 * `page.goto` to the VM list showing its count and its first row, with the hosts, networks,
 * pools and operations fetched beside it and the event stream open. The VMs beyond web1 are
 * records (simulated), as the issue allows.
 *
 *   npx tsx bench/web/overview.bench.ts [--loads 9]
 *
 * Goal (issue 13): the 1,000-VM overview within 2x of the 10-VM one. Prints the Markdown of a run
 * (bench/web/RESULTS.md keeps them). Needs `npm run build:web` first (npm test's setup does).
 */
import { cpus, loadavg, totalmem } from 'node:os';
import { parseArgs } from 'node:util';
import type { Page } from 'playwright-core';
import { addSimulatedVms, PASSWORD, startConsoleFixture, USER } from '../../test/web/console-fixture.ts';

const { values: args } = parseArgs({ options: { loads: { type: 'string', default: '9' } } });
const LOADS = Number(args.loads);

/** Milliseconds from navigation to the list showing `total` VMs and its first row. */
async function loadOverview(page: Page, url: string, total: number): Promise<number> {
  const started = performance.now();
  await page.goto(url);
  await page.getByRole('region', { name: 'Virtual machines' }).getByText(`${total} VMs`, { exact: true }).waitFor({ timeout: 60_000 });
  await page.locator('[data-testid="vm-scroller"] li').first().waitFor();
  return performance.now() - started;
}

const quantile = (values: number[], q: number) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor(q * values.length))];

async function main(): Promise<void> {
  const loadBefore = loadavg();
  const fixture = await startConsoleFixture();
  try {
    const page = await fixture.browser.newPage();
    await page.goto(fixture.url);
    await page.getByLabel('User', { exact: true }).fill(USER);
    await page.getByLabel('Password', { exact: true }).fill(PASSWORD);
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    const results: Array<{ vms: number; times: number[] }> = [];
    for (const total of [10, 1000]) {
      const present = (await fixture.cluster.services.vms.counts()).vms;
      await addSimulatedVms(fixture.cluster, present - 1, total - 1);
      await loadOverview(page, fixture.url, total); // warm: the first load of each size is not counted
      const times: number[] = [];
      for (let load = 0; load < LOADS; load++) times.push(await loadOverview(page, fixture.url, total));
      results.push({ vms: total, times });
    }
    const loadAfter = loadavg();
    const [small, large] = results;
    const ratio = quantile(large.times, 0.5) / quantile(small.times, 0.5);
    console.log(`### ${new Date().toISOString().slice(0, 10)}: overview with 10 and 1,000 VMs\n`);
    console.log(
      `- Machine: ${cpus()[0]?.model.trim()} x ${cpus().length}, ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version}, Chromium headless`,
    );
    console.log(
      `- Load average (1, 5, 15 min): before ${loadBefore.map((l) => l.toFixed(2)).join(', ')}; after ${loadAfter.map((l) => l.toFixed(2)).join(', ')}`,
    );
    console.log(`- ${LOADS} loads of each size after one warm-up load, each a fresh navigation of the signed-in page\n`);
    console.log('| VMs | median ms | p90 ms | min ms | max ms |');
    console.log('| --- | --- | --- | --- | --- |');
    for (const { vms, times } of results)
      console.log(
        `| ${vms} | ${quantile(times, 0.5).toFixed(0)} | ${quantile(times, 0.9).toFixed(0)} | ${Math.min(...times).toFixed(0)} | ${Math.max(...times).toFixed(0)} |`,
      );
    console.log(`\n1,000 VMs take ${ratio.toFixed(2)}x the time of 10 (goal: at most 2x): ${ratio <= 2 ? 'met' : 'MISSED'}.`);
  } finally {
    await fixture.close();
  }
}

await main();
