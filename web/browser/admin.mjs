// Drives the web admin in headless Chromium: log in, create a PAN, a node and a LUN, map
// it, check they appear, do I/O through the rings, see the LUN's counters move and the node
// connect in the event log, unmap only after the confirmation page asks, and keep
// screenshots of the LUN page (SHOT) and, beside it, the dashboard and the PAN page.
// Environment: BASE, TOKEN, PANGATE (binary), SOCKET (ring socket), SHOT.
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';

const { BASE, TOKEN, PANGATE, SOCKET, SHOT } = process.env;
const fail = (why) => { console.error(`admin.mjs: ${why}`); process.exit(1); };

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(15000);
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

  await page.goto(`${BASE}/pans/web/luns/vol`);
  const before = Number(await page.textContent('td.writes'));
  const out = execFileSync(PANGATE, ['bench', '--socket', SOCKET, '--pan', 'web', '--node', 'web1', '--credential',
    credential, '--rw', 'randwrite', '--qd', '4', '--seconds', '2'], { encoding: 'utf8' });
  const ios = JSON.parse(out.trim().split('\n').pop()).ios;
  // Let the once-a-second sampler see the I/O so the charts have points.
  await page.waitForTimeout(2500);
  await page.reload();
  const after = Number(await page.textContent('td.writes'));
  if (!(after - before >= ios && ios > 0)) fail(`writes went from ${before} to ${after} after ${ios} I/Os`);
  const chart = await page.getAttribute('figure.chart polyline', 'points');
  if (!chart || chart.split(' ').length < 2) fail(`the IOPS chart has no points: ${chart}`);
  await page.screenshot({ path: SHOT, fullPage: true });
  const beside = (name) => SHOT.replace(/[^/]*$/, name);

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
  console.log(JSON.stringify({ credential_len: credential.length, ios, writes_before: before, writes_after: after }));
} finally {
  await browser.close();
}
