// Drives a real headless Chromium against the CSRF test servers of csrf_browser.rs.
//
//   node csrf.mjs APP_ORIGIN ATTACKER_ORIGIN...
//
// 1. Loads APP_ORIGIN/ (strict nonce CSP; /csrf.js and /app.js loaded with the nonce). app.js
//    posts with csrfFetch, recovers from a forged token cookie, posts once without the helper,
//    and fills the page's form; then the form is submitted here.
// 2. Loads each ATTACKER_ORIGIN/, whose page fires a cross-origin fetch at the app and submits
//    a form to it. Every response from the app origin is recorded.
// Prints one JSON object on stdout.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [app, ...attackers] = process.argv.slice(2);
const userDataDir = mkdtempSync(join(tmpdir(), 'portcullis-chromium-'));
const out = { app: null, csp: null, form: null, attackers: [], errors: [] };
const t0 = Date.now();
const log = (msg) => process.stderr.write(`[csrf.mjs +${Date.now() - t0} ms] ${msg}\n`);

log('launching chromium');
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium',
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
  timeout: 15000,
});

// Waits for `promise`, at most `ms`: a step that hangs is reported, not waited on forever.
function bounded(promise, ms, what) {
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(() => {
      log(`${what}: still pending after ${ms} ms, going on`);
      resolve();
    }, ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

function watch(page, tag) {
  page.on('response', (r) => log(`${tag}: ${r.request().method()} ${r.url()} -> ${r.status()}`));
  page.on('pageerror', (e) => out.errors.push(`${tag}: ${e.message}`));
  page.on('console', (m) => {
    // Refused requests log "Failed to load resource" (and CORS errors on the attacker's
    // page): expected. Anything else on the app's page — a CSP violation, a script error — is
    // not.
    const text = m.text();
    if (m.type() === 'error' && tag === 'app' && !text.startsWith('Failed to load resource')) {
      out.errors.push(`${tag}: ${text}`);
    }
  });
}

try {
  log('browser up');
  const page = await context.newPage();
  watch(page, 'app');
  const loaded = await page.goto(`${app}/`, { waitUntil: 'load', timeout: 10000 });
  out.csp = loaded.headers()['content-security-policy'] || null;
  await page.waitForFunction(() => document.body.dataset.result, null, { timeout: 10000 });
  out.app = JSON.parse(await page.evaluate(() => document.body.dataset.result));
  log(`app page: ${JSON.stringify(out.app)}`);
  const [formResponse] = await Promise.all([
    page.waitForResponse((r) => r.url() === `${app}/api/counter-form`, { timeout: 10000 }),
    page.click('#note-submit'),
  ]);
  out.form = formResponse.status();
  log(`form: ${out.form}`);
  // Closing a page while the form's navigation is still committing can hang Chromium's close
  // (seen about one run in ten): let the navigation finish first.
  await page.waitForURL(`${app}/api/counter-form`, { waitUntil: 'load', timeout: 10000 });
  await bounded(page.close(), 5000, 'closing the app page');
  log('app page closed');

  for (const attacker of attackers) {
    const evil = await context.newPage();
    log(`page for ${attacker} opened`);
    watch(evil, 'attacker');
    const seen = [];
    evil.on('response', (r) => {
      if (r.url().startsWith(`${app}/`)) {
        seen.push({ method: r.request().method(), path: new URL(r.url()).pathname, status: r.status() });
      }
    });
    const formDone = evil.waitForResponse((r) => r.url() === `${app}/api/counter-form`, {
      timeout: 10000,
    });
    await evil.goto(`${attacker}/`, { waitUntil: 'load', timeout: 10000 });
    log(`${attacker} loaded`);
    await formDone;
    // The page's fetch ran before its form was submitted. Chromium hides a response that CORS
    // blocks from the page (and from Playwright), so the server's audit log tells its status.
    out.attackers.push({ origin: attacker, responses: seen });
    log(`${attacker}: ${JSON.stringify(seen)}`);
    await bounded(evil.close(), 5000, `closing ${attacker}`);
  }
} catch (e) {
  out.errors.push(`driver: ${e && e.stack ? e.stack : e}`);
  log(`driver error: ${e && e.stack ? e.stack : e}`);
} finally {
  log('closing chromium');
  await bounded(context.close(), 10000, 'closing chromium');
  log('chromium closed');
  rmSync(userDataDir, { recursive: true, force: true });
}
// Exit even if Chromium never closed: it quits itself when its pipe to this process closes.
process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
