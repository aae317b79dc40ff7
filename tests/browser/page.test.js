// The web page at `/`, driven in a real headless Chromium against a real
// server (started by scripts/browser-test.sh, which passes its URL and a query
// image in LOOKALIKE_URL and QUERY_IMAGE).
const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { chromium } = require('playwright-core');

const base = process.env.LOOKALIKE_URL;
const queryImage = process.env.QUERY_IMAGE;
let browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    // The machine has no network: keep Chromium from reaching out.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
});

after(async () => browser && browser.close());

test('a user picks a dataset, searches by image, and sees results and errors', async () => {
  assert.ok(base && queryImage, 'run through scripts/browser-test.sh');
  const page = await browser.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  await page.goto(base + '/');
  await page.waitForSelector('#dataset-select option[value="fashion"]', { state: 'attached' });
  await page.selectOption('#dataset-select', 'fashion');
  await page.setInputFiles('#query-file', queryImage);
  await page.fill('#k', '8');
  await page.click('#search-button');
  await page.waitForSelector('#results .result');
  const ids = await page.$$eval('#results .result', (els) => els.map((e) => e.dataset.itemId));
  assert.strictEqual(ids.length, 8);
  assert.ok(ids.every((id) => id.includes('/')), `item ids look like label/index: ${ids}`);
  const thumbsLoaded = await page.$$eval('#results img', (imgs) => imgs.every((i) => i.complete && i.naturalWidth > 0));
  assert.ok(thumbsLoaded, 'every thumbnail loaded from /datasets/{name}/items/{id}/image');

  await page.setInputFiles('#query-file', { name: 'notes.png', mimeType: 'image/png', buffer: Buffer.from('not an image') });
  await page.click('#search-button');
  await page.waitForFunction(() => document.querySelector('#error')?.textContent.includes('invalid_image'));
  assert.deepStrictEqual(pageErrors, []);
});
