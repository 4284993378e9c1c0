// Drives the web chat page (/chat) in headless Debian chromium across a
// node restart: a message typed while the node is down is kept on the page
// and sent once the node is back. Reads DOWN and UP on stdin; prints
// READY, SENT, VISITOR <id> and DONE.
// Usage: node chat_resend.mjs BASE_URL SCREENSHOT
import { launch } from './launch.mjs';
import * as readline from 'node:readline';

const [base, screenshot] = process.argv.slice(2);
const rl = readline.createInterface({ input: process.stdin });
const lines = rl[Symbol.asyncIterator]();
async function expect(word) {
  const { value } = await lines.next();
  if (value !== word) throw new Error(`expected ${word}, got ${value}`);
}
const browser = await launch();
const noPending = () => document.querySelectorAll('.pending').length === 0;
try {
  const context = await browser.newContext({ viewport: { width: 420, height: 700 } });
  let page = await context.newPage();
  // Record how the node closes the page's sockets.
  await page.addInitScript(() => {
    window.__closes = [];
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
      constructor(...a) { super(...a); this.addEventListener('close', (e) => window.__closes.push(e.code)); }
    };
  });
  page.on('pageerror', (e) => { console.error('page error:', e.message); process.exitCode = 3; });
  await page.goto(base + '/chat?tenant=acme');
  await page.waitForFunction(() => document.querySelector('#status').textContent === 'online');
  await page.fill('#text', 'before the restart');
  await page.press('#text', 'Enter');
  await page.waitForFunction(noPending, null, { timeout: 10000 });
  console.log('VISITOR ' + await page.evaluate(() => localStorage.getItem('threadline-visitor-acme')));
  console.log('READY');
  await expect('DOWN');
  await page.waitForFunction(() => document.querySelector('#status').textContent !== 'online');
  await page.fill('#text', 'during the restart');
  await page.press('#text', 'Enter');
  await page.waitForSelector('.pending');
  console.log('SENT');
  console.log('CLOSED ' + (await page.evaluate(() => window.__closes[0])));
  // The customer closes the tab meanwhile, and comes back once the node
  // is up: the message was kept, and goes out then.
  await page.close();
  await expect('UP');
  page = await context.newPage();
  page.on('pageerror', (e) => { console.error('page error:', e.message); process.exitCode = 3; });
  await page.goto(base + '/chat?tenant=acme');
  await page.waitForFunction(noPending, null, { timeout: 30000 });
  await page.screenshot({ path: screenshot });
  console.log('LOG ' + (await page.textContent('#log')).replace(/\s+/g, ' '));
  console.log('DONE');
} finally {
  rl.close();
  await browser.close();
}
