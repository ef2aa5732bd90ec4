// Drives the web admin in headless Chromium: log in, create a PAN, a node and a LUN, map
// it, check they appear, run `pangate bench` and watch the LUN page's charts and counters
// move without a reload, hover a chart, see a hidden tab stop polling, check the phone
// layout, see the node connect in the event log, unmap only after the confirmation page
// asks, and keep screenshots of the LUN page (SHOT) and, beside it, the dashboard, the PAN
// page and the LUN page at phone width.
// Environment: BASE, TOKEN, PANGATE (binary), SOCKET (ring socket), SHOT.
import { chromium } from 'playwright-core';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const { BASE, TOKEN, PANGATE, SOCKET, SHOT } = process.env;
const run = promisify(execFile);
const fail = (why) => { console.error(`admin.mjs: ${why}`); process.exit(1); };

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(15000);
  await page.setViewportSize({ width: 1280, height: 800 });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  const form = (op) => `form:has(input[name="op"][value="${op}"])`;
  const submit = async (op) => {
    await Promise.all([page.waitForLoadState('load'), page.click(`${form(op)} button[type=submit]`)]);
  };

  await page.goto(`${BASE}/login`);
  await page.fill('input[name=token]', TOKEN);
  await Promise.all([page.waitForURL(`${BASE}/`), page.click('button[type=submit]')]);
  if (!(await page.textContent('header')).includes('admin')) fail('not logged in');

  await page.fill(`${form('create-pan')} input[name=pan]`, 'web');
  await submit('create-pan');
  await page.goto(`${BASE}/pans/web`);

  await page.fill(`${form('create-node')} input[name=node]`, 'web1');
  await submit('create-node');
  const credential = (await page.textContent('#credential')).trim();
  if (credential.length < 16) fail(`no credential shown: ${credential}`);
  await page.click('text=continue');

  await page.fill(`${form('create-lun')} input[name=name]`, 'vol');
  await page.fill(`${form('create-lun')} input[name=size]`, '16M');
  await submit('create-lun');

  await page.selectOption(`${form('map')} select[name=node]`, 'web1');
  await page.selectOption(`${form('map')} select[name=image]`, 'vol');
  await submit('map');

  const nodes = await page.textContent('table.nodes');
  if (!nodes.includes('web1') || !nodes.includes('target 0 LUN 0 → vol (rw)')) fail(`the map is not shown: ${nodes}`);
  const luns = await page.textContent('table.luns');
  if (!luns.includes('vol') || !luns.includes('16.0 MiB')) fail(`the LUN is not shown: ${luns}`);

  // The LUN page updates itself while `pangate bench` runs: its charts gain points and
  // their values move, and its counters grow, all without a reload (the marker set on
  // this window object would not survive one).
  await page.goto(`${BASE}/pans/web/luns/vol`);
  await page.evaluate(() => { window.notReloaded = true; });
  const before = Number(await page.textContent('td.writes'));
  const lastOf = (chart) => page.evaluate((c) => {
    const f = document.querySelector(`figure[data-chart="${c}"]`);
    return f && f.dataset.last ? JSON.parse(f.dataset.last) : null;
  }, chart);
  const bench = run(PANGATE, ['bench', '--socket', SOCKET, '--pan', 'web', '--node', 'web1', '--credential',
    credential, '--rw', 'randwrite', '--qd', '4', '--seconds', '5'], { encoding: 'utf8' });
  await page.waitForFunction(() => {
    const f = document.querySelector('figure[data-chart="IOPS"]');
    return f && f.dataset.last && JSON.parse(f.dataset.last)[1] > 0;
  }, null, { timeout: 10000 });
  const moving = await lastOf('IOPS');
  await page.waitForFunction((seen) => {
    const f = document.querySelector('figure[data-chart="IOPS"]');
    return JSON.parse(f.dataset.last)[1] !== seen;
  }, moving[1], { timeout: 5000 });
  await page.waitForFunction((b) => Number(document.querySelector('td.writes').textContent) > b, before);
  const caption = await page.textContent('figure[data-chart="IOPS"] figcaption');
  if (!/write [\d.]+ k?\/s/.test(caption)) fail(`the IOPS caption does not say the newest rate: ${caption}`);
  const latency = await lastOf('Latency');
  if (!latency || !(latency[1] > 0)) fail(`no p99 latency while the benchmark runs: ${JSON.stringify(latency)}`);
  // The chart has axes with units, and hovering shows the values under the cursor.
  const ticks = await page.getAttribute('figure[data-chart="Throughput"]', 'data-ticks');
  if (!/^0 B\/s \|.*[kM]B\/s$/.test(ticks)) fail(`the throughput chart's y-axis has no units: ${ticks}`);
  const canvas = await page.locator('figure[data-chart="IOPS"] canvas').count();
  if (canvas !== 1) fail(`the IOPS chart has ${canvas} canvases`);
  const box = await page.locator('figure[data-chart="Throughput"] .u-over').boundingBox();
  await page.mouse.move(box.x + box.width - 3, box.y + box.height / 2);
  const hover = await page.textContent('figure[data-chart="Throughput"] .u-legend');
  if (!/write\s*[\d.]+ [kMG]?B\/s/.test(hover)) fail(`hovering shows no value: ${hover}`);
  const ios = JSON.parse((await bench).stdout.trim().split('\n').pop()).ios;
  await page.waitForFunction((b) => Number(document.querySelector('td.writes').textContent) >= b, before + ios);
  const after = Number(await page.textContent('td.writes'));
  if (!(after - before >= ios && ios > 0)) fail(`writes went from ${before} to ${after} after ${ios} I/Os`);
  if (!(await page.evaluate(() => window.notReloaded))) fail('the page reloaded');
  await page.click('button[data-window="3600"]');
  if ((await page.getAttribute('button[data-window="3600"]', 'aria-pressed')) !== 'true') fail('no 60-minute window');
  await page.click('button[data-window="300"]');
  await page.mouse.move(0, 0);
  await page.screenshot({ path: SHOT, fullPage: true });
  const beside = (name) => SHOT.replace(/[^/]*$/, name);

  // A hidden tab stops polling, and starts again when shown.
  const polls = [];
  page.on('request', (r) => { if (r.url().includes('/series')) polls.push(Date.now()); });
  await page.evaluate(() => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await page.waitForTimeout(1500);
  const hiddenSince = Date.now();
  await page.waitForTimeout(2500);
  if (polls.some((t) => t > hiddenSince)) fail(`a hidden tab polled ${polls.filter((t) => t > hiddenSince).length} times`);
  if ((await page.textContent('#live')) !== 'paused') fail(`the header does not say paused: ${await page.textContent('#live')}`);
  await page.evaluate(() => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => false });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await page.waitForTimeout(1500);
  if (!polls.some((t) => t > hiddenSince)) fail('the tab did not poll again once shown');

  // At phone width nothing but a table's own scroller is wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  for (const [path, shot] of [['/pans/web/luns/vol', 'admin-lun-page-phone.png'], ['/pans/web', null], ['/', null]]) {
    await page.goto(`${BASE}${path}`);
    await page.waitForTimeout(300);
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    if (wide > 392) fail(`${path} is ${wide} px wide on a 390 px screen`);
    if (shot) await page.screenshot({ path: beside(shot), fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 800 });

  // The dashboard's event log saw the node connect for the benchmark (and go again).
  await page.goto(`${BASE}/`);
  const events = await page.textContent('table.events');
  if (!events.includes('web/web1') || !events.includes('queue pair opened')) fail(`no connect event: ${events}`);
  const header = await page.textContent('header');
  if (!/up \d/.test(header) || !header.includes('rings:')) fail(`no status in the header: ${header}`);
  await page.screenshot({ path: beside('admin-dashboard.png'), fullPage: true });

  // Unmapping asks first: Cancel keeps the map, confirming removes it.
  await page.goto(`${BASE}/pans/web`);
  await page.screenshot({ path: beside('admin-pan-page.png'), fullPage: true });
  const unmap = `${form('unmap')} button[type=submit]`;
  await Promise.all([page.waitForURL(/\/ui\/confirm/), page.click(unmap)]);
  const asked = await page.textContent('p.confirm');
  if (!asked.includes('unmap target 0 LUN 0 from web/web1')) fail(`the confirmation says: ${asked}`);
  await Promise.all([page.waitForURL(`${BASE}/pans/web`), page.click('text=Cancel')]);
  if (!(await page.textContent('table.nodes')).includes('target 0 LUN 0 → vol')) fail('Cancel unmapped');
  await Promise.all([page.waitForURL(/\/ui\/confirm/), page.click(unmap)]);
  await Promise.all([page.waitForURL(`${BASE}/pans/web`), page.click('button.danger')]);
  if ((await page.textContent('table.nodes')).includes('target 0 LUN 0 → vol')) fail('confirming did not unmap');
  if (errors.length) fail(`the pages' scripts failed: ${errors.join('; ')}`);
  console.log(JSON.stringify({ credential_len: credential.length, ios, writes_before: before, writes_after: after }));
} finally {
  await browser.close();
}
