// Drives the business's inbox (/inbox) in headless Debian chromium: sign
// in, read the list, open a conversation, wait for a new customer to
// appear live (no reload), filter, and screenshot at 1366 and 390 px.
// Usage: node inbox.mjs BASE_URL ADMIN_TOKEN TENANT SHOT_WIDE SHOT_NARROW
// Prints LIST <contacts>, THREAD <text>, READY (waiting for the live
// update), LIVE <contacts>, WAITING <contacts>, NARROW <width>, DONE.
import { launch } from './launch.mjs';

const [base, token, tenant, wide, narrow] = process.argv.slice(2);
const browser = await launch();
const names = (page) => page.$$eval('#rows .who', (es) => es.map((e) => e.textContent).join('|'));
try {
  const page = await browser.newPage({ viewport: { width: 1366, height: 800 } });
  page.on('pageerror', (e) => { console.error('page error:', e.message); process.exitCode = 3; });
  await page.goto(base + '/inbox');
  await page.fill('#token', token);
  await page.fill('#tenant', tenant);
  await page.click('#login-form button');
  await page.waitForFunction(() => document.querySelectorAll('#rows button').length >= 3);
  console.log('LIST ' + await names(page));
  // Keyboard: the first row takes focus and opens with Enter.
  await page.focus('#rows button');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#thread li');
  console.log('THREAD ' + (await page.textContent('#thread')).replace(/\s+/g, ' '));
  await page.waitForFunction(() => document.querySelector('#live').textContent === 'live');
  console.log('READY');
  // A new customer writes: the list shows them without a reload.
  await page.waitForFunction(() => document.querySelectorAll('#rows button').length >= 4, null, { timeout: 15000 });
  console.log('LIVE ' + await names(page));
  await page.selectOption('#f-show', 'waiting=true');
  await page.waitForFunction(() => document.querySelectorAll('#rows button').length === 1);
  console.log('WAITING ' + await names(page));
  await page.selectOption('#f-show', '');
  await page.waitForFunction(() => document.querySelectorAll('#rows button').length >= 4);
  await page.screenshot({ path: wide });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click('#back');
  const w = await page.evaluate(() => document.documentElement.scrollWidth);
  console.log('NARROW ' + w);
  await page.screenshot({ path: narrow, fullPage: true });
  console.log('DONE');
} finally {
  await browser.close();
}
