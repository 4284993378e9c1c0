// Drives the agent desktop (/agent) in headless Debian chromium:
// sign in, go available, accept the offer that arrives, reply, screenshot.
// Usage: node agent_desktop.mjs BASE_URL TOKEN REPLY SCREENSHOT
// Prints READY once available and DONE after the reply was sent.
import { launch } from './launch.mjs';

const [base, token, reply, screenshot] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  page.on('pageerror', (e) => { console.error('page error:', e.message); process.exitCode = 3; });
  await page.goto(base + '/agent');
  await page.fill('#token', token);
  await page.click('#login-button');
  await page.waitForSelector('#me:not(:text("Agent"))', { timeout: 10000 });
  await page.selectOption('#presence', 'available');
  // The server confirms the status before work is offered.
  await page.waitForFunction(() => document.querySelector('#conn').textContent === 'connected');
  await page.waitForTimeout(200);
  console.log('READY');
  await page.waitForSelector('.offer .accept', { timeout: 20000 });
  const offerText = await page.textContent('.offer');
  console.log('OFFER ' + offerText.replace(/\s+/g, ' '));
  await page.locator('.offer .accept').first().click();
  await page.waitForSelector('#transcript .msg', { timeout: 10000 });
  const transcript = await page.textContent('#transcript');
  console.log('TRANSCRIPT ' + transcript.replace(/\s+/g, ' '));
  await page.fill('#reply', reply);
  await page.click('#send');
  await page.waitForFunction((r) => [...document.querySelectorAll('#transcript .msg .text')]
    .some((e) => e.textContent === r), reply, { timeout: 10000 });
  // A private note, from the same box.
  await page.fill('#reply', 'Prefers mornings, allergic to latex');
  await page.click('#note');
  await page.waitForFunction(() => [...document.querySelectorAll('#transcript .msg .text')]
    .some((e) => e.textContent.includes('Prefers mornings, allergic to latex')), null, { timeout: 10000 });
  await page.screenshot({ path: screenshot });
  console.log('DONE');
} finally {
  await browser.close();
}
