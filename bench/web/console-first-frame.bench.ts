/**
 * The web console's screen: from the click on "Screen" on a VM's page to the first frame of the
 * guest drawn on the canvas (noVNC), through the console ticket, the control plane's WebSocket,
 * the host agent's relay and QEMU's VNC display. Also when the status line says connected (the
 * RFB handshake with the one-time password done).
 *
 *   npx tsx bench/web/console-first-frame.bench.ts [rounds]     (npm run build:web first)
 *
 * One `nubis up` with one tiny VM, Debian's Chromium headless with a fresh profile. Round 1 is
 * cold (the screen's code, noVNC, is fetched the first time); the others have it in the browser's
 * cache, as a second visit does. "First frame" is the first animation frame at which the canvas
 * has its size and more than one colour. The results are appended to bench/web/RESULTS.md only
 * when the machine is quiet (1-minute load average below 1 before the run); otherwise they are
 * printed and not recorded.
 */
import { appendFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { chromium } from 'playwright-core';
import { WEB_DIST_DIR } from '../../src/api/web-console.ts';
import type { Operation } from '../../src/wire/schemas.ts';
import { NubisInstance } from '../../test/helpers/nubis-instance.ts';
import { CHROMIUM, CHROMIUM_FLAGS } from '../../test/web/console-fixture.ts';

const rounds = Number(process.argv[2] ?? 10);
const RESULTS = join(dirname(fileURLToPath(import.meta.url)), 'RESULTS.md');
const QUIET_LOAD = 1;

if (!existsSync(join(WEB_DIST_DIR, 'index.html'))) throw new Error('Build the web console first: npm run build:web');

interface Round {
  connectedMs: number;
  firstFrameMs: number;
}

/**
 * Clicks "Screen" in the page and resolves with the times to "connected" and to the first
 * non-blank frame. Plain JavaScript in a string: tsx would add its own helpers to a function,
 * which the page does not have.
 */
const CLICK_AND_TIME = `new Promise((resolve, reject) => {
  const link = Array.from(document.querySelectorAll('a')).find((a) => a.textContent === 'Screen');
  if (!link) return reject(new Error('No Screen link on the page'));
  const started = performance.now();
  let connectedMs = 0;
  const frame = () => {
    const now = performance.now();
    if (!connectedMs && document.querySelector('[data-screen-state="connected"]')) connectedMs = now - started;
    const canvas = document.querySelector('[data-testid="vnc-screen"] canvas');
    if (canvas && canvas.width > 0 && canvas.height > 0) {
      const pixels = new Uint32Array(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data.buffer);
      if (pixels.some((pixel) => pixel !== pixels[0])) return resolve({ connectedMs: connectedMs || now - started, firstFrameMs: now - started });
    }
    if (now - started > 60000) return reject(new Error('No frame within 60 s'));
    requestAnimationFrame(frame);
  };
  link.click();
  requestAnimationFrame(frame);
})`;

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const fmt = (ms: number) => ms.toFixed(0);

async function main(): Promise<void> {
  const loadBefore = loadavg()[0];
  const nubis = new NubisInstance('bench-web');
  const profile = mkdtempSync(join(tmpdir(), `nubis-bench-web-chromium-${process.pid}-`));
  const results: Round[] = [];
  try {
    await nubis.up();
    const created = await nubis.api<{ operation: Operation }>('POST', '/v1/vms', { name: 'frame1', image: 'tiny', cpus: 1, memoryMb: 256 });
    const operation = await nubis.waitOperation(created.body.operation.id);
    if (operation.status !== 'succeeded') throw new Error(`The VM did not start: ${operation.error?.message}`);
    const browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_FLAGS,
      viewport: { width: 1280, height: 800 },
    });
    try {
      const page = await browser.newPage();
      await page.goto(nubis.url);
      await page.getByText('Sign in with an API token').click();
      await page.getByLabel('Token', { exact: true }).fill(nubis.token);
      await page.getByRole('button', { name: 'Sign in with token' }).click();
      await page.getByRole('heading', { name: 'Overview' }).waitFor();
      for (let round = 1; round <= rounds; round++) {
        await page.goto(`${nubis.url}/vms/default/frame1`);
        await page.getByRole('link', { name: 'Screen', exact: true }).waitFor();
        const timed = (await page.evaluate(CLICK_AND_TIME)) as Round;
        results.push(timed);
        console.error(`round ${round}: connected ${fmt(timed.connectedMs)} ms, first frame ${fmt(timed.firstFrameMs)} ms`);
      }
    } finally {
      await browser.close();
    }
  } finally {
    await nubis.destroy();
    rmSync(profile, { recursive: true, force: true });
  }
  const loadAfter = loadavg()[0];
  const warm = results.slice(1);
  const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
  const lines = [
    `## ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, commit ${commit}, ${rounds} rounds`,
    '',
    `Load average (1 min) before ${loadBefore.toFixed(2)}, after ${loadAfter.toFixed(2)}.`,
    '',
    '| | connected (ms) | first frame (ms) |',
    '| --- | --- | --- |',
    `| round 1 (cold: the screen's code fetched) | ${fmt(results[0].connectedMs)} | ${fmt(results[0].firstFrameMs)} |`,
    ...(warm.length
      ? [
          `| rounds 2-${rounds}, median | ${fmt(median(warm.map((r) => r.connectedMs)))} | ${fmt(median(warm.map((r) => r.firstFrameMs)))} |`,
          `| rounds 2-${rounds}, slowest | ${fmt(Math.max(...warm.map((r) => r.connectedMs)))} | ${fmt(Math.max(...warm.map((r) => r.firstFrameMs)))} |`,
        ]
      : []),
    '',
  ];
  console.log(lines.join('\n'));
  if (loadBefore < QUIET_LOAD) appendFileSync(RESULTS, `\n${lines.join('\n')}`);
  else console.error(`Not recorded in ${RESULTS}: the machine was not quiet (load average ${loadBefore.toFixed(2)} >= ${QUIET_LOAD})`);
}

await main();
