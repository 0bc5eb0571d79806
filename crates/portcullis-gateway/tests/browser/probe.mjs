// Loads one page in Debian's headless Chromium and reports what the browser did with it, as
// one line of JSON on stdout, for the gateway's Rust tests to check.
//
//   node probe.mjs '{"url": "http://127.0.0.1:PORT/", "read": ["#status"], "click": "#counter", "clicks": 2}'
//
// `waitFor` (an expression) is polled until true after the load, before reading and clicking;
// `waitAfter` likewise after the clicks. `acceptDialogs: true` answers `confirm()` with OK
// (Playwright otherwise dismisses it).
// Reported: the HTTP status, the response's Content-Security-Policy header, the raw HTML as
// the server sent it, the document title after load, the text of each `read` selector (before
// and after the clicks), the nonce of every <script> in the DOM, and every
// `securitypolicyviolation` event (collected by a script the browser injects before the
// page's own, which the page's CSP does not apply to).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';

const opts = JSON.parse(process.argv[2] ?? '{}');
if (!opts.url) {
  console.error('usage: node probe.mjs \'{"url": "...", "read": [...], "click": "#id", "clicks": N}\'');
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), 'portcullis-chromium-'));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__violations.push({
        directive: e.effectiveDirective,
        blocked: e.blockedURI,
        sample: e.sample,
        disposition: e.disposition,
      });
    });
  });
  const console_ = [];
  page.on('console', (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => console_.push(`pageerror: ${e.message}`));

  if (opts.acceptDialogs) page.on('dialog', (d) => d.accept());
  // Polled with page.evaluate (exempt from the page's CSP), not waitForFunction, so the
  // wait itself can never cause an eval violation.
  const waitUntilTrue = async (expression) => {
    const deadline = Date.now() + 15000;
    while (!(await page.evaluate(expression))) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for: ${expression}`);
      await page.waitForTimeout(100);
    }
  };

  const response = await page.goto(opts.url, { waitUntil: 'load', timeout: 30000 });
  const html = response ? await response.text() : '';
  const headers = response ? await response.allHeaders() : {};
  if (opts.waitFor) await waitUntilTrue(opts.waitFor);
  const read = async () => {
    const out = {};
    for (const sel of opts.read ?? []) {
      out[sel] = await page.locator(sel).first().textContent({ timeout: 5000 }).catch(() => null);
    }
    return out;
  };
  const before = await read();
  if (opts.click) {
    for (let i = 0; i < (opts.clicks ?? 1); i++) {
      await page.click(opts.click, { timeout: 10000 });
    }
    // Let React commit the updates.
    await page.waitForTimeout(200);
  }
  if (opts.waitAfter) await waitUntilTrue(opts.waitAfter);
  const after = await read();
  // Give late violation reports (dynamically added scripts) a moment to arrive.
  await page.waitForTimeout(300);
  const dom = await page.evaluate(() => ({
    title: document.title,
    scripts: [...document.scripts].map((s) => ({
      src: s.getAttribute('src'),
      nonce: s.nonce,
      inline: !s.src,
    })),
    violations: window.__violations,
  }));
  process.stdout.write(
    JSON.stringify({
      status: response ? response.status() : 0,
      csp: headers['content-security-policy'] ?? null,
      cache_control: headers['cache-control'] ?? null,
      html,
      title: dom.title,
      before,
      after,
      scripts: dom.scripts,
      violations: dom.violations,
      console: console_,
    }) + '\n',
  );
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
