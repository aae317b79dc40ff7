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
  // The thumbnails load after the results are drawn: wait for them (a broken one never
  // gets a natural width, so this times out and the assertion below fails).
  const thumbsLoaded = await page
    .waitForFunction(
      () => [...document.querySelectorAll('#results img')].every((i) => i.complete && i.naturalWidth > 0),
      null,
      { timeout: 10000 },
    )
    .then(() => true, () => false);
  assert.ok(thumbsLoaded, 'every thumbnail loaded from /datasets/{name}/items/{id}/image');

  await page.setInputFiles('#query-file', { name: 'notes.png', mimeType: 'image/png', buffer: Buffer.from('not an image') });
  await page.click('#search-button');
  await page.waitForFunction(() => document.querySelector('#error')?.textContent.includes('invalid_image'));
  assert.deepStrictEqual(pageErrors, []);
});

// Console errors from the page's own code; the refused requests the tests
// provoke on purpose are logged by Chromium as failed resource loads.
function consoleErrors(page) {
  const errors = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && !/^Failed to load resource: the server responded with a status of 4\d\d/.test(m.text())) errors.push(m.text());
  });
  return errors;
}

test('a user fine-tunes the dataset, sees the before/after metrics and charts, and searches with the new model', async () => {
  assert.ok(base && queryImage, 'run through scripts/browser-test.sh');
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  const logged = consoleErrors(page);
  await page.goto(base + '/');
  await page.waitForSelector('#dataset-select option[value="fashion"]', { state: 'attached' });
  await page.selectOption('#dataset-select', 'fashion');
  await page.waitForSelector('#models-body tr[data-model-id]');
  const before = await page.$$eval('#models-body tr[data-model-id]', (rows) => rows.map((r) => ({
    id: r.dataset.modelId, active: !!r.querySelector('.status.active'), activate: !!r.querySelector('button') })));
  assert.strictEqual(before.length, 1, `one (pretrained) model before training: ${JSON.stringify(before)}`);
  assert.ok(before[0].active && !before[0].activate, 'the only model is active and has no Activate button');

  // Refused by the API: its code and message are shown, no job starts.
  await page.fill('#finetune-epochs', '0');
  await page.click('#finetune-button');
  await page.waitForFunction(() => !document.querySelector('#finetune-error').hidden);
  const refusal = await page.textContent('#finetune-error');
  assert.match(refusal, /invalid_params/);
  assert.match(refusal, /epochs/);
  assert.ok(await page.isHidden('#finetune'), 'no job panel for a refused request');

  // A short fine-tune, promoted whatever it scores.
  await page.selectOption('#finetune-promote', 'always');
  await page.fill('#finetune-epochs', '3');
  await page.click('#finetune-button');
  await page.waitForSelector('#finetune[data-status]');
  assert.ok(await page.isHidden('#finetune-error'), 'the earlier refusal is cleared');
  assert.ok(await page.isDisabled('#finetune-button'), 'no second fine-tune while one runs');
  await page.waitForSelector('#jobs [data-job-id]:has-text("finetune")');
  await page.waitForFunction(() => !['queued', 'running'].includes(document.querySelector('#finetune').dataset.status),
    null, { timeout: 300_000, polling: 250 });
  const status = await page.getAttribute('#finetune', 'data-status');
  assert.strictEqual(status, 'succeeded', 'the fine-tune succeeded: ' + (await page.textContent('#finetune-failure')));

  const cells = await page.$$eval('#finetune-eval tbody tr', (rows) => rows.map((r) => [r.dataset.metric,
    r.querySelector('.before').textContent, r.querySelector('.after').textContent]));
  assert.deepStrictEqual(cells.map((c) => c[0]), ['recall_at_1', 'recall_at_5', 'recall_at_10', 'map_at_r']);
  for (const [metric, b, a] of cells) {
    assert.match(b, /^[01]\.\d{3}$/, `${metric} before is a number`);
    assert.match(a, /^[01]\.\d{3}$/, `${metric} after is a number`);
  }
  const summary = await page.textContent('#finetune-summary');
  assert.match(summary, /MAP@R (\+|-)?\d+\.\d% relative/);
  assert.match(summary, /promoted/);
  assert.doesNotMatch(summary, /not promoted/);
  const newModel = await page.textContent('#finetune-summary strong');

  await page.waitForFunction(() => {
    const imgs = [...document.querySelectorAll('#finetune-result .charts img')];
    return imgs.length === 2 && imgs.every((i) => i.complete && i.naturalWidth > 0);
  });
  const charts = await page.$$eval('#finetune-result .charts img', (imgs) => imgs.map((i) => i.dataset.artifact).sort());
  assert.deepStrictEqual(charts, ['distance-histogram.png', 'loss-curve.png']);

  await page.waitForFunction((id) => {
    const rows = document.querySelectorAll('#models-body tr[data-model-id]');
    return rows.length === 2 && document.querySelector(`#models-body tr[data-model-id="${id}"] .status.active`);
  }, newModel);
  const after = await page.$$eval('#models-body tr[data-model-id]', (rows) => rows.map((r) => ({
    id: r.dataset.modelId, active: !!r.querySelector('.status.active'), activate: !!r.querySelector('button') })));
  assert.deepStrictEqual(after.filter((m) => m.active).map((m) => m.id), [newModel]);
  assert.ok(after.find((m) => m.id === before[0].id).activate, 'the old model can be activated again');

  if (process.env.SCREENSHOT) {
    await page.locator('section[aria-labelledby="models-title"]').screenshot({ path: process.env.SCREENSHOT });
  }

  await page.setInputFiles('#query-file', queryImage);
  await page.click('#search-button');
  await page.waitForFunction((id) => document.querySelector('#search-meta').textContent.includes('model ' + id), newModel);
  assert.deepStrictEqual(pageErrors, []);
  assert.deepStrictEqual(logged, []);
});
