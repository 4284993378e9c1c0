// Drives the agent desktop (/agent) in headless Debian chromium: a wrong
// token is refused on the sign-in screen; signed in and available, the
// desktop keeps the agent's status across a node restart, so the next
// customer who asks for a person is offered to them.
// Usage: node agent_restart.mjs BASE_URL TOKEN SCREENSHOT
// Reads UP on stdin; prints REFUSED, READY, BACK, OFFER and DONE.
import { launch } from './launch.mjs';
import * as readline from 'node:readline';

const [base, token, screenshot] = process.argv.slice(2);
const rl = readline.createInterface({ input: process.stdin });
const lines = rl[Symbol.asyncIterator]();
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  page.on('pageerror', (e) => { console.error('page error:', e.message); process.exitCode = 3; });
  await page.goto(base + '/agent');
  await page.fill('#token', 'not-a-token');
  await page.click('#login-button');
  await page.waitForSelector('#login-error:not(.hidden)', { timeout: 10000 });
  console.log('REFUSED ' + await page.textContent('#login-error'));
  await page.fill('#token', token);
  await page.click('#login-button');
  await page.waitForSelector('#me:not(:text("Agent"))', { timeout: 10000 });
  await page.selectOption('#presence', 'available');
  await page.waitForFunction(() => document.querySelector('#conn').textContent === 'connected');
  await page.waitForTimeout(200);
  console.log('READY');
  const { value } = await lines.next();
  if (value !== 'UP') throw new Error('expected UP, got ' + value);
  await page.waitForFunction(() => document.querySelector('#conn').textContent === 'connected'
    && document.querySelector('#presence').value === 'available', null, { timeout: 30000 });
  await page.waitForTimeout(300);
  console.log('BACK');
  await page.waitForSelector('.offer .accept', { timeout: 20000 });
  console.log('OFFER ' + (await page.textContent('.offer')).replace(/\s+/g, ' '));
  await page.screenshot({ path: screenshot });
  console.log('DONE');
} finally {
  rl.close();
  await browser.close();
}
