// The API page at `/docs` (Swagger UI over /openapi.json), in a real headless Chromium
// against a real server (started by scripts/browser-test.sh, which passes its URL in
// LOOKALIKE_URL). The page must work offline: every request it makes goes to the server.
const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { chromium } = require('playwright-core');

const base = process.env.LOOKALIKE_URL;
let browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
});

after(async () => browser && browser.close());

test('/docs shows every operation of the document, from the server alone', async () => {
  assert.ok(base, 'run through scripts/browser-test.sh');
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  const elsewhere = [];
  page.on('request', (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('data:')) elsewhere.push(r.url()); });
  await page.goto(base + '/docs');
  await page.waitForSelector('.opblock-summary');
  const document = await (await fetch(base + '/openapi.json')).json();
  const expected = Object.entries(document.paths).flatMap(([path, item]) =>
    Object.keys(item).filter((m) => ['get', 'post', 'put', 'patch', 'delete'].includes(m)).map((m) => `${m.toUpperCase()} ${path}`));
  const shown = await page.$$eval('.opblock-summary', (els) => els.map((e) =>
    `${e.querySelector('.opblock-summary-method').textContent.trim()} ${e.querySelector('.opblock-summary-path').getAttribute('data-path')}`));
  assert.deepStrictEqual([...shown].sort(), [...expected].sort());
  assert.ok(await page.isVisible('text=Visual-similarity search over image catalogues.'), 'the introduction is shown');
  assert.ok(await page.isVisible('button.authorize'), 'the bearer key can be entered');

  if (process.env.DOCS_SCREENSHOT) {
    await page.screenshot({ path: process.env.DOCS_SCREENSHOT });
  }

  // One operation opened: its answers, error codes included, are there to read.
  await page.click('#operations-search-search .opblock-summary');
  await page.waitForSelector('#operations-search-search .responses-table');
  const statuses = await page.$$eval('#operations-search-search .response-col_status', (els) => els.map((e) => e.textContent.trim()));
  for (const status of ['200', '400', '401', '404', '413', '415', '500', '503']) {
    assert.ok(statuses.includes(status), `POST /search lists ${status}: ${statuses}`);
  }
  assert.deepStrictEqual(elsewhere, [], 'no request left the server');
  assert.deepStrictEqual(pageErrors, []);
});
