// Drives Debian's chromium (headless) through playwright-core for the dashboard
// tests: one command per stdin line as JSON, one JSON answer per stdout line.
// tests/test_ui.py starts it once and steers it step by step, so the browser
// and the hub's state move together (register, stop a server, ...).
//
//   {"id": 1, "op": "open", "url": "http://127.0.0.1:7080/"}
//   {"id": 2, "op": "wait", "selector": "tr.instance[data-status=HEALTHY]", "text": "p1"}
//   -> {"id": 2, "ok": true, "value": "..."}  or  {"id": 2, "ok": false, "error": "..."}

import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage',
];

// launch() gives the browser a fresh temporary --user-data-dir and removes it on close.
const browser = await chromium.launch({ executablePath, headless: true, args: ARGS });
let context = null;
let page = null;
let problems = []; // console errors and uncaught exceptions of the page

async function open({ url, width = 1440, height = 900 }) {
  await context?.close();
  context = await browser.newContext({ viewport: { width, height }, deviceScaleFactor: 1 });
  page = await context.newPage();
  problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page: ${e.message}`));
  await page.goto(url, { waitUntil: 'domcontentloaded' });
}

function locate({ selector, text }) {
  const found = page.locator(selector);
  return text ? found.filter({ hasText: text }) : found;
}

const ops = {
  open,
  async wait(c) {
    const target = locate(c).first();
    await target.waitFor({ state: c.state || 'visible', timeout: c.timeout ?? 15000 });
    return c.state === 'detached' || c.state === 'hidden' ? '' : (await target.textContent()) ?? '';
  },
  async gone(c) {
    await page.waitForFunction(
      ({ selector, text }) => ![...document.querySelectorAll(selector)]
        .some((el) => !text || el.textContent.includes(text)),
      { selector: c.selector, text: c.text || '' },
      { timeout: c.timeout ?? 15000 },
    );
    return '';
  },
  async click(c) {
    await locate(c).first().click({ timeout: c.timeout ?? 15000 });
    return '';
  },
  async fill(c) {
    await locate(c).first().fill(c.value, { timeout: c.timeout ?? 15000 });
    return '';
  },
  async press(c) {
    await locate(c).first().press(c.key, { timeout: c.timeout ?? 15000 });
    return '';
  },
  async text(c) {
    return (await locate(c).first().textContent({ timeout: c.timeout ?? 15000 })) ?? '';
  },
  async attr(c) {
    return (await locate(c).first().getAttribute(c.name, { timeout: c.timeout ?? 15000 })) ?? '';
  },
  async count(c) {
    return locate(c).count();
  },
  async evaluate(c) {
    return page.evaluate(c.expression);
  },
  async screenshot(c) {
    await page.screenshot({ path: c.path, fullPage: c.fullPage ?? false });
    return c.path;
  },
  async problems() {
    return problems;
  },
};

const lines = createInterface({ input: process.stdin });
process.stdout.write(`${JSON.stringify({ id: 0, ok: true, value: browser.version() })}\n`);
for await (const line of lines) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  let answer;
  try {
    answer = { id: command.id, ok: true, value: await ops[command.op](command) };
  } catch (e) {
    answer = { id: command.id, ok: false, error: String(e?.message ?? e).split('\n').slice(0, 12).join('\n') };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
await context?.close();
await browser.close();
