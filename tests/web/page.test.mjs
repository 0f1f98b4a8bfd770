// The Manage License page in headless Chromium (playwright-core), started
// by tests/web.rs against the real binary with demo-like data. Every figure
// on the page is compared with the JSON the API gives the same token.
//
// env: ACCRUE_URL, ACCRUE_ADMIN_TOKEN, ACCRUE_ACCOUNT_TOKEN (of
// ACCRUE_ACCOUNT), ACCRUE_OTHER_TOKEN (of ACCRUE_OTHER_ACCOUNT, a `de`
// account), ACCRUE_CHROMIUM, ACCRUE_WEB_OUT (screenshots, downloads).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const need = (k) => {
  const v = process.env[k];
  if (!v) { console.error(`page.test.mjs: ${k} is not set (run it through tests/web.rs)`); process.exit(2); }
  return v;
};
const BASE = need('ACCRUE_URL');
const ADMIN = need('ACCRUE_ADMIN_TOKEN');
const TOKEN = need('ACCRUE_ACCOUNT_TOKEN');
const OTHER_TOKEN = need('ACCRUE_OTHER_TOKEN');
const ACCOUNT = need('ACCRUE_ACCOUNT');
const OTHER = need('ACCRUE_OTHER_ACCOUNT');
const CHROMIUM = need('ACCRUE_CHROMIUM');
const OUT = need('ACCRUE_WEB_OUT');
const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

// ------------------------------------------------------------ helpers

async function api(path, token, opts = {}) {
  const res = await fetch(BASE + path, {
    method: opts.method || 'GET',
    headers: { Authorization: 'Bearer ' + token, ...(opts.body ? { 'Content-Type': 'application/json' } : {}) },
    body: opts.body ? JSON.stringify(opts.body) : undefined,
  });
  const text = await res.text();
  let body = null;
  try { body = JSON.parse(text); } catch (_) { /* not JSON */ }
  return { status: res.status, body };
}
async function get(path, token) {
  const r = await api(path, token);
  assert.equal(r.status, 200, `GET ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

const norm = (s) => String(s ?? '').replace(/[\u00a0\u202f]/g, ' ').replace(/\s+/g, ' ').trim();
const cap = (s) => s.charAt(0).toUpperCase() + s.slice(1).replace(/_/g, ' ');

// How the page must show a money string: every digit the API sent.
function fmt(s, lang, currency = 'USD') {
  const scale = (String(s).split('.')[1] || '').length;
  const min = new Intl.NumberFormat(lang, { style: 'currency', currency }).resolvedOptions().minimumFractionDigits;
  return norm(new Intl.NumberFormat(lang, {
    style: 'currency', currency, minimumFractionDigits: min, maximumFractionDigits: Math.max(min, scale),
  }).format(String(s)));
}

const text = async (page, sel) => norm(await page.locator(sel).first().textContent());
const attr = (page, sel, a) => page.locator(sel).first().getAttribute(a);

// A money cell: its machine value is the API's string, its text that
// string formatted for the account's language.
async function moneyIs(page, sel, value, lang) {
  const d = page.locator(sel + ' data').first();
  assert.equal(await d.getAttribute('value'), value, `${sel} value`);
  assert.equal(norm(await d.textContent()), fmt(value, lang), `${sel} text`);
}
async function timeIs(page, sel, iso) {
  const t = page.locator(sel + ' time').first();
  assert.equal(await t.getAttribute('datetime'), iso, `${sel} datetime`);
  assert.match(norm(await t.textContent()), /20\d\d/, `${sel} shows a date`);
}

let passed = 0;
let failed = 0;
async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed++;
    console.log(`ok - ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed++;
    console.log(`not ok - ${name}\n${(e && e.stack) || e}`);
  }
}

// Any CSP violation or script error fails the run.
function watch(page, label) {
  const problems = [];
  page.setDefaultTimeout(5000);
  page.on('pageerror', (e) => { problems.push(`${label}: page error: ${e.message}`); console.log(`# ${label}: page error: ${e.message}`); });
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) problems.push(`${label}: ${m.text()}`);
    if ((m.type() === 'error' || m.type() === 'warning') && !/^Failed to load resource/.test(m.text())) console.log(`# ${label} console ${m.type()}: ${m.text()}`);
  });
  return problems;
}

async function signIn(page, token) {
  await page.goto(BASE + '/');
  await page.locator('#signin:not([hidden])').waitFor();
  await page.getByLabel('Access token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#account:not([hidden])').waitFor();
}

async function openTab(page, name) {
  await page.getByRole('tab', { name }).click();
  await page.locator(`[role="tabpanel"]:not([hidden])[aria-labelledby="${await page.getByRole('tab', { name }).getAttribute('id')}"]`).waitFor();
}

const rows = (page, table) => page.locator(`#${table} tbody tr[data-${table === 'invoices' ? 'number' : 'server'}]`);

// ------------------------------------------------------------ the run

const started = Date.now();
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--headless'],
});
const problems = [];

try {
  const ov = await get(`/v1/accounts/${ACCOUNT}`, TOKEN);
  const acts = await get(`/v1/accounts/${ACCOUNT}/activations`, TOKEN);
  const sess = await get(`/v1/accounts/${ACCOUNT}/sessions`, TOKEN);
  const inv = await get(`/v1/accounts/${ACCOUNT}/invoices`, TOKEN);
  const lang = ov.email_language;
  assert.equal(ov.payment.status, 'failed', 'the demo data has a failed payment');

  // ---------------------------------------------------- an account token
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const page = await ctx.newPage();
  const seen = watch(page, 'account');

  await step('sign in with an account token; the token stays in sessionStorage only', async () => {
    await signIn(page, TOKEN);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('accrue.token')), TOKEN);
    assert.equal(await page.evaluate(() => localStorage.length), 0);
    assert.equal(await page.evaluate(() => document.cookie), '');
    assert.equal(await text(page, '#account-name'), ov.name);
    assert.equal(await page.locator('#picker').isHidden(), true, 'no account picker for an account token');
  });

  await step('License tab: the API figures', async () => {
    assert.equal(await text(page, '#f-serial'), ov.serial_number);
    assert.equal(await text(page, '#f-frequency'), cap(ov.billing_frequency));
    assert.equal(await text(page, '#f-data-management'), ov.plan.data_management ? 'Included' : 'Not included');
    assert.equal(await text(page, '#f-license-status'), cap(ov.license.status));
    await timeIs(page, '#f-term-end', ov.license.term_end);
    assert.ok(ov.license.last_sync_at, 'a server synced');
    await timeIs(page, '#f-last-sync', ov.license.last_sync_at);
    for (const kind of ['full', 'viewer']) {
      for (const f of ['licensed', 'in_use', 'remaining']) {
        assert.equal(await text(page, `#stat-${kind} [data-f="${f}"]`), String(ov.seats[kind][f]), `${kind}.${f}`);
      }
    }
    await moneyIs(page, '#stat-credits-used', ov.credits.used, lang);
    await moneyIs(page, '#stat-credits-available', ov.credits.available, lang);
    const used = Number(ov.credits.used), avail = Number(ov.credits.available);
    const pct = Math.round((used / (used + avail)) * 100);
    assert.equal(await attr(page, '#credits-bar', 'aria-valuenow'), String(pct));
    const ratio = await page.evaluate(() => document.getElementById('credits-fill').getBoundingClientRect().width
      / document.getElementById('credits-bar').clientWidth);
    assert.ok(Math.abs(ratio * 100 - pct) < 2, `bar filled ${ratio * 100}% for ${pct}%`);
    assert.equal(await text(page, '#activations-used'), `${acts.used} of ${acts.max} activations in use`);
    assert.equal(await rows(page, 'activations').count(), acts.activations.length);
    for (const a of acts.activations) {
      const row = page.locator(`#activations tr[data-server="${a.server_id}"]`);
      assert.equal(norm(await row.locator('td').nth(1).textContent()), a.hostname);
      assert.match(norm(await row.locator('td').nth(4).textContent()), new RegExp('^' + cap(a.status)));
      if (a.last_sync_at) assert.equal(await row.locator('td').nth(3).locator('time').getAttribute('datetime'), a.last_sync_at);
    }
    assert.equal(await page.locator('#activations button').count(), 0, 'an account token is offered no Release');
    await page.screenshot({ path: join(OUT, 'license-desktop.png'), fullPage: true });
  });

  await step('the Payment & Billing card is red after the failed payment', async () => {
    assert.equal(await page.locator('#card-payment').evaluate((e) => e.classList.contains('failed')), true);
    const border = await page.locator('#card-payment').evaluate((e) => getComputedStyle(e).borderTopColor);
    assert.equal(border, 'rgb(180, 35, 24)');
    assert.match(await text(page, '#pay-status'), /^Payment failed/);
    assert.equal(await text(page, '#pay-method'), `${cap(ov.payment.method.brand)} ending in ${ov.payment.method.last4}`);
    // SPEC §8: the dunning dates, once the overview carries them.
    const d = ov.payment.dunning;
    assert.equal(await page.locator('#dunning').isVisible(), !!d);
    if (d) {
      if (d.next_retry_at) await timeIs(page, '#dunning-next-retry', d.next_retry_at);
      if (d.suspends_at) await timeIs(page, '#dunning-suspends', d.suspends_at);
    }
  });

  await step('AI credits tab: the API figures; an account token cannot change them', async () => {
    await openTab(page, 'AI credits');
    for (const [sel, k] of [['#c-base', 'base'], ['#c-limit', 'additional_limit'], ['#c-used', 'used'],
      ['#c-additional-used', 'additional_used'], ['#c-available', 'available']]) {
      await moneyIs(page, sel, ov.credits[k], lang);
    }
    assert.equal(norm(await page.locator('#c-base data').textContent()), '$10.00', 'en format');
    await timeIs(page, '#c-reset', ov.next_credit_reset);
    assert.equal(await page.locator('#c-next-limit-row').isHidden(), ov.credits.limit_from_next_period === undefined);
    assert.equal(await page.locator('#limit').isDisabled(), true, 'the limit form is disabled');
    assert.equal(await page.getByRole('button', { name: 'Review' }).isDisabled(), true);
  });

  await step('Active sessions tab: the table and the counts by type and client', async () => {
    await openTab(page, 'Active sessions');
    const body = page.locator('#sessions tbody tr');
    assert.equal(await body.count(), sess.sessions.length);
    assert.ok(sess.sessions.length >= 4);
    for (let i = 0; i < sess.sessions.length; i++) {
      const s = sess.sessions[i];
      const cells = body.nth(i).locator('td');
      assert.equal(norm(await cells.nth(0).textContent()), s.id);
      assert.equal(norm(await cells.nth(1).textContent()), s.user_name);
      assert.equal(await cells.nth(2).locator('time').getAttribute('datetime'), s.last_accessed_at);
      assert.equal(norm(await cells.nth(3).textContent()), cap(s.user_type));
      assert.equal(norm(await cells.nth(4).textContent()), s.module);
      assert.equal(norm(await cells.nth(5).textContent()), s.client === 'addin' ? 'Add-in' : 'Web');
    }
    const sum = sess.summary;
    assert.equal(await text(page, '#s-total'), String(sum.total));
    for (const t of ['full', 'viewer', 'system_manager']) {
      assert.equal(await text(page, `#s-${t.replace('_', '-')}`), `${sum[t].users} (${sum[t].sessions} sessions)`);
    }
    assert.equal(await text(page, '#s-web'), String(sum.web));
    assert.equal(await text(page, '#s-addin'), String(sum.addin));
  });

  await step('Billing tab: two years of invoices as the API lists them', async () => {
    await openTab(page, 'Billing');
    assert.equal(await page.locator('#period-from').inputValue(), inv.from);
    assert.equal(await page.locator('#period-to').inputValue(), inv.to);
    const r = rows(page, 'invoices');
    assert.equal(await r.count(), inv.invoices.length);
    assert.ok(inv.invoices.length >= 2, 'demo data has invoices in more than one month');
    for (let i = 0; i < inv.invoices.length; i++) {
      const x = inv.invoices[i];
      const cells = r.nth(i).locator('td');
      assert.equal(await cells.nth(0).locator('time').getAttribute('datetime'), x.date);
      assert.match(norm(await cells.nth(1).textContent()), new RegExp('^' + x.number));
      assert.equal(norm(await cells.nth(2).textContent()), x.subscription);
      assert.equal(norm(await cells.nth(3).textContent()), cap(x.status));
      assert.equal(await cells.nth(4).locator('data').getAttribute('value'), x.total);
      assert.equal(norm(await cells.nth(4).textContent()), fmt(x.total, lang));
    }
  });

  await page.screenshot({ path: join(OUT, 'billing-desktop.png'), fullPage: true });

  await step('Billing: the Period filter with Apply shows what the API lists for that period', async () => {
    const months = [...new Set(inv.invoices.map((x) => x.date.slice(0, 7)))];
    assert.ok(months.length >= 2, 'invoices in two months at least');
    const m = months[months.length - 1];
    const from = `${m}-01`, to = `${m}-28`;
    const want = await get(`/v1/accounts/${ACCOUNT}/invoices?from=${from}&to=${to}`, TOKEN);
    assert.ok(want.invoices.length >= 1 && want.invoices.length < inv.invoices.length, 'the filter narrows the list');
    await page.getByLabel('From', { exact: true }).fill(from);
    await page.getByLabel('To', { exact: true }).fill(to);
    await page.getByRole('button', { name: 'Apply' }).click();
    await page.waitForFunction((n) => document.querySelectorAll('#invoices tbody tr[data-number]').length === n, want.invoices.length);
    const got = await rows(page, 'invoices').evaluateAll((trs) => trs.map((tr) => tr.dataset.number));
    assert.deepEqual(got, want.invoices.map((x) => x.number));
    assert.match(await text(page, '#billing-range'), new RegExp(`^${want.invoices.length} document`));
  });

  await step('Billing: Download PDF gives the invoice PDF', async () => {
    const first = rows(page, 'invoices').first();
    const number = await first.getAttribute('data-number');
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      first.getByRole('button', { name: `Download PDF of ${number}` }).click(),
    ]);
    assert.equal(download.suggestedFilename(), `${number}.pdf`);
    const file = join(OUT, `${number}.pdf`);
    await download.saveAs(file);
    const bytes = readFileSync(file);
    assert.equal(bytes.subarray(0, 4).toString('latin1'), '%PDF');
  });

  await step('Payment tab: the saved method, billing email and language', async () => {
    await openTab(page, 'Payment');
    const m = ov.payment.method;
    assert.equal(await text(page, '#p-brand'), cap(m.brand));
    assert.equal(await text(page, '#p-last4'), m.last4);
    assert.equal(await text(page, '#p-expiry'), `${String(m.exp_month).padStart(2, '0')}/${m.exp_year}`);
    assert.equal(await text(page, '#p-email'), ov.billing_email);
    assert.match(await text(page, '#p-language'), new RegExp(`\\(${ov.email_language}\\)$`));
    assert.equal(await page.locator('#pm-token').isDisabled(), true, 'the payment form is disabled');
    assert.equal(await page.getByRole('button', { name: 'Replace payment method' }).isDisabled(), true);
  });

  await step('keyboard only: Tab reaches the tabs, arrows, Home and End move between them', async () => {
    await page.reload(); // signs in again from sessionStorage
    await page.locator('#account:not([hidden])').waitFor();
    let id = null;
    for (let i = 0; i < 30 && id !== 'tab-license'; i++) {
      await page.keyboard.press('Tab');
      id = await page.evaluate(() => document.activeElement && document.activeElement.id);
    }
    assert.equal(id, 'tab-license', 'Tab reaches the selected tab');
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert.notEqual(outline, 'none', 'focus is visible');
    const expectTab = async (tab, panel) => {
      assert.equal(await page.evaluate(() => document.activeElement.id), tab);
      assert.equal(await attr(page, '#' + tab, 'aria-selected'), 'true');
      assert.equal(await page.locator('#' + panel).isVisible(), true);
      assert.equal(await page.locator('[role="tabpanel"]:not([hidden])').count(), 1);
      assert.equal(await page.locator('[role="tab"][tabindex="0"]').count(), 1, 'roving tabindex');
    };
    await page.keyboard.press('ArrowRight');
    await expectTab('tab-credits', 'panel-credits');
    await page.keyboard.press('ArrowRight');
    await page.keyboard.press('ArrowRight');
    await expectTab('tab-billing', 'panel-billing');
    await page.keyboard.press('End');
    await expectTab('tab-payment', 'panel-payment');
    await page.keyboard.press('ArrowRight');
    await expectTab('tab-license', 'panel-license');
    await page.keyboard.press('ArrowLeft');
    await expectTab('tab-payment', 'panel-payment');
    await page.keyboard.press('Home');
    await expectTab('tab-license', 'panel-license');
    await page.keyboard.press('ArrowRight');
    await page.keyboard.press('ArrowRight');
    await page.keyboard.press('ArrowRight');
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'panel-billing', 'Tab moves into the panel');
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'period-from', 'then to its first field');
    await page.keyboard.press('Shift+Tab');
    await page.keyboard.press('Shift+Tab');
    await page.keyboard.press('Home');
    await expectTab('tab-license', 'panel-license');
  });

  await step('axe-core: no serious or critical violations on any tab', async () => {
    await page.evaluate(AXE); // devtools evaluation: not inline script, so the CSP stays as served
    const found = [];
    for (const name of ['License', 'AI credits', 'Active sessions', 'Billing', 'Payment']) {
      await openTab(page, name);
      const res = await page.evaluate(() => window.axe.run(document, { runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] }));
      for (const v of res.violations) {
        if (v.impact === 'serious' || v.impact === 'critical') {
          found.push(`${name}: ${v.id} (${v.impact}) ${v.help}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
        }
      }
    }
    assert.deepEqual(found, []);
  });

  await step('an account token reaches no other account, also by editing the URL', async () => {
    const other = await get(`/v1/accounts/${OTHER}`, ADMIN);
    const otherInv = await get(`/v1/accounts/${OTHER}/invoices`, ADMIN);
    await page.goto(`${BASE}/#account=${OTHER}`);
    await page.locator('#app-error:not([hidden])').waitFor();
    assert.match(await text(page, '#app-error'), new RegExp(`No account "${OTHER}"`));
    assert.equal(await page.locator('#account').isHidden(), true);
    const html = await page.content();
    assert.ok(!html.includes(other.serial_number) && !html.includes(other.name), 'nothing of the other account on the page');
    // The same token, from the page's origin, straight at the API.
    const statuses = await page.evaluate(async ([o, n]) => {
      const t = sessionStorage.getItem('accrue.token');
      const h = { headers: { Authorization: 'Bearer ' + t } };
      const paths = [`/v1/accounts/${o}`, `/v1/accounts/${o}/invoices`, `/v1/accounts/${o}/sessions`,
        `/v1/accounts/${o}/activations`, `/v1/invoices/${n}`, `/v1/invoices/${n}/pdf`, '/v1/accounts'];
      return Promise.all(paths.map((p) => fetch(p, h).then((r) => r.status)));
    }, [OTHER, otherInv.invoices[0].number]);
    assert.deepEqual(statuses, [404, 404, 404, 404, 404, 404, 403]);
    // Back to its own account.
    await page.goto(`${BASE}/#account=${ACCOUNT}`);
    await page.locator('#account:not([hidden])').waitFor();
    assert.equal(await text(page, '#account-name'), ov.name);
  });
  // SPEC §8/§9 are being built: until the API sends them, the page's
  // reading of `payment.dunning` and of credit notes in the invoice list is
  // checked on the real responses with those fields added in flight.
  await step('dunning dates and credit notes are shown once the API sends them', async () => {
    const dunning = { invoice: inv.invoices[0].number, attempt: 2, next_retry_at: '2026-03-18T00:00:00Z', suspends_at: '2026-03-29T00:00:00Z' };
    const cn = { type: 'credit_note', number: 'CN-2026-000001', date: inv.invoices[0].date, subscription: inv.invoices[0].subscription,
      period: inv.invoices[0].period, status: 'issued', total: '-12.50', currency: 'USD' };
    await page.route(`**/v1/accounts/${ACCOUNT}`, async (route) => {
      const res = await route.fetch();
      const body = await res.json();
      body.payment.dunning = dunning;
      await route.fulfill({ response: res, json: body });
    });
    await page.route(`**/v1/accounts/${ACCOUNT}/invoices*`, async (route) => {
      const res = await route.fetch();
      const body = await res.json();
      body.invoices.unshift(cn);
      await route.fulfill({ response: res, json: body });
    });
    const pdfUrls = [];
    await page.route('**/v1/credit-notes/*/pdf', (route) => {
      pdfUrls.push(new URL(route.request().url()).pathname);
      return route.fulfill({ status: 200, contentType: 'application/pdf', body: '%PDF-1.7 test' });
    });
    await page.reload();
    await page.locator('#account:not([hidden])').waitFor();
    assert.equal(await page.locator('#dunning').isVisible(), true);
    assert.equal(await text(page, '#dunning-invoice'), dunning.invoice);
    assert.equal(await text(page, '#dunning-attempt'), '2');
    await timeIs(page, '#dunning-next-retry', dunning.next_retry_at);
    await timeIs(page, '#dunning-suspends', dunning.suspends_at);
    await openTab(page, 'Billing');
    const row = page.locator(`#invoices tr[data-number="${cn.number}"]`);
    assert.match(norm(await row.locator('td').nth(1).textContent()), /^CN-2026-000001 Credit note$/);
    assert.equal(await row.locator('data').getAttribute('value'), '-12.50');
    assert.equal(norm(await row.locator('data').textContent()), fmt('-12.50', lang));
    const [download] = await Promise.all([page.waitForEvent('download'),
      row.getByRole('button', { name: `Download PDF of ${cn.number}` }).click()]);
    assert.equal(download.suggestedFilename(), `${cn.number}.pdf`);
    assert.deepEqual(pdfUrls, [`/v1/credit-notes/${cn.number}/pdf`]);
    await page.unrouteAll();
    await page.reload();
    await page.locator('#account:not([hidden])').waitFor();
    // Back on the real answer: the API's own dunning block, or none.
    const real = (await get(`/v1/accounts/${ACCOUNT}`, TOKEN)).payment.dunning;
    if (real) {
      assert.equal(await text(page, '#dunning-invoice'), real.invoice);
      assert.equal(await text(page, '#dunning-attempt'), String(real.attempt));
      await timeIs(page, '#dunning-suspends', real.suspends_at);
    } else {
      assert.equal(await page.locator('#dunning').isHidden(), true, 'no dunning block without the field');
    }
  });

  await step('sign out forgets the token', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.locator('#signin:not([hidden])').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('accrue.token')), null);
  });
  problems.push(...seen);
  await ctx.close();

  // ---------------------------------------------------- a phone, 375 px
  const phone = await browser.newContext({ viewport: { width: 375, height: 812 }, deviceScaleFactor: 1, isMobile: true, hasTouch: true });
  const pp = await phone.newPage();
  const seenPhone = watch(pp, 'phone');
  await step('375 px wide: no tab scrolls sideways', async () => {
    await signIn(pp, TOKEN);
    for (const name of ['License', 'AI credits', 'Active sessions', 'Billing', 'Payment']) {
      await openTab(pp, name);
      const [sw, cw] = await pp.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
      assert.ok(sw <= cw, `${name}: scrollWidth ${sw} > ${cw}`);
      if (name === 'License') await pp.screenshot({ path: join(OUT, 'license-phone.png'), fullPage: true });
      if (name === 'Billing') await pp.screenshot({ path: join(OUT, 'billing-phone.png'), fullPage: true });
    }
  });
  problems.push(...seenPhone);
  await phone.close();

  // ---------------------------------------------------- the other (de) account
  const de = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const dp = await de.newPage();
  const seenDe = watch(dp, 'de');
  await step('a de account sees its amounts as 1.234,50 $', async () => {
    const o = await get(`/v1/accounts/${OTHER}`, OTHER_TOKEN);
    assert.equal(o.email_language, 'de');
    await signIn(dp, OTHER_TOKEN);
    assert.equal(await text(dp, '#account-name'), o.name);
    await openTab(dp, 'Billing');
    const cell = dp.locator('#invoices data[value="1234.50"]').first();
    assert.equal(norm(await cell.textContent()), '1.234,50 $');
    await openTab(dp, 'AI credits');
    await moneyIs(dp, '#c-used', o.credits.used, 'de');
  });
  problems.push(...seenDe);
  await de.close();

  // ---------------------------------------------------- an admin (support)
  const adm = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const ap = await adm.newPage();
  const seenAdmin = watch(ap, 'admin');
  const pmRequests = [];
  ap.on('request', (r) => { if (r.url().includes('/payment-method')) pmRequests.push(r.method()); });

  await step('an admin picks an account', async () => {
    await signIn(ap, ADMIN);
    const list = await get('/v1/accounts', ADMIN);
    const options = await ap.locator('#account-select option').evaluateAll((os) => os.map((o) => o.value));
    assert.deepEqual(options, list.accounts.map((a) => a.id));
    await ap.getByLabel('Account', { exact: true }).selectOption(OTHER);
    await ap.waitForFunction((n) => document.getElementById('account-name').textContent === n, list.accounts.find((a) => a.id === OTHER).name);
    await ap.getByLabel('Account', { exact: true }).selectOption(ACCOUNT);
    await ap.waitForFunction((n) => document.getElementById('account-name').textContent === n, ov.name);
    assert.equal(await text(ap, '#account-name'), ov.name);
  });

  await step('AI credits: subscribe an account that has no additional credits', async () => {
    const before = await get(`/v1/accounts/${OTHER}`, ADMIN);
    assert.equal(before.credits.additional_limit, '0.00');
    await ap.getByLabel('Account', { exact: true }).selectOption(OTHER);
    await ap.waitForFunction((n) => document.getElementById('account-name').textContent === n, before.name);
    await openTab(ap, 'AI credits');
    assert.match(await text(ap, '#c-subscription'), /^Not subscribed/);
    await ap.getByLabel(/Monthly limit for additional credits/).fill('7.50');
    await ap.getByRole('button', { name: 'Review' }).click();
    await ap.locator('#order:not([hidden])').waitFor();
    assert.equal(await text(ap, '#order-what'), 'Subscribe to additional AI credits');
    await ap.getByRole('button', { name: 'Confirm' }).click();
    await ap.waitForFunction(() => document.querySelector('#c-limit data').value === '7.50');
    const after = await get(`/v1/accounts/${OTHER}`, ADMIN);
    assert.equal(after.credits.additional_limit, '7.50');
    assert.equal(await text(ap, '#c-subscription'), 'Subscribed');
    await moneyIs(ap, '#c-available', after.credits.available, 'de');
    await ap.getByLabel('Account', { exact: true }).selectOption(ACCOUNT);
    await ap.waitForFunction((n) => document.getElementById('account-name').textContent === n, ov.name);
    await openTab(ap, 'License');
  });

  await step('Release License frees an activation', async () => {
    const before = await get(`/v1/accounts/${ACCOUNT}/activations`, ADMIN);
    const target = before.activations.find((a) => a.status === 'active' && a.server_id === 'srv-tokyo');
    assert.ok(target, 'srv-tokyo is active');
    await ap.getByRole('button', { name: 'Release License of server srv-tokyo' }).click();
    await ap.getByRole('button', { name: 'Confirm release of server srv-tokyo' }).click();
    await ap.waitForFunction(() => /^Released/.test(document.querySelector('#activations tr[data-server="srv-tokyo"] td:nth-child(5)').textContent));
    const after = await get(`/v1/accounts/${ACCOUNT}/activations`, ADMIN);
    assert.equal(after.used, before.used - 1);
    assert.equal(await text(ap, '#activations-used'), `${after.used} of ${after.max} activations in use`);
    assert.equal(await ap.getByRole('button', { name: 'Release License of server srv-tokyo' }).count(), 0);
  });

  await step('AI credits: change the limit through the order summary, then unsubscribe → pending', async () => {
    await openTab(ap, 'AI credits');
    const limit = ap.getByLabel(/Monthly limit for additional credits/);
    await limit.fill('600');
    await ap.getByRole('button', { name: 'Review' }).click();
    assert.match(await text(ap, '#credits-msg'), /at most 500/);
    assert.equal(await ap.locator('#order').isHidden(), true, 'no order for 600');
    await limit.fill('20.00');
    await ap.getByRole('button', { name: 'Review' }).click();
    await ap.locator('#order:not([hidden])').waitFor();
    const cur = (await get(`/v1/accounts/${ACCOUNT}`, ADMIN)).credits.additional_limit;
    assert.equal(await attr(ap, '#order-current data', 'value'), cur);
    assert.equal(await attr(ap, '#order-new data', 'value'), '20.00');
    await ap.getByRole('button', { name: 'Confirm' }).click();
    await ap.waitForFunction(() => document.querySelector('#c-limit data').value === '20.00');
    const o1 = await get(`/v1/accounts/${ACCOUNT}`, ADMIN);
    assert.equal(o1.credits.additional_limit, '20.00');
    await moneyIs(ap, '#c-available', o1.credits.available, lang);

    await ap.getByRole('button', { name: 'Unsubscribe…' }).click();
    await ap.locator('#order:not([hidden])').waitFor();
    assert.equal(await attr(ap, '#order-new data', 'value'), '0.00');
    await ap.getByRole('button', { name: 'Confirm' }).click();
    await ap.waitForFunction(() => document.getElementById('c-subscription').dataset.pending === 'true');
    const o2 = await get(`/v1/accounts/${ACCOUNT}`, ADMIN);
    assert.equal(o2.credits.pending_unsubscribe, true);
    assert.match(await text(ap, '#c-subscription'), /^Unsubscribe pending/);
    await timeIs(ap, '#c-subscription', o2.next_credit_reset);
    await moneyIs(ap, '#c-next-limit', o2.credits.limit_from_next_period, lang);
    assert.equal(await ap.getByRole('button', { name: 'Unsubscribe…' }).isDisabled(), true);
  });

  await step('Payment: a card number is refused in the page, nothing is sent; the API refuses it too', async () => {
    await openTab(ap, 'Payment');
    for (const [s, want] of [['4242 4242 4242 4242', true], ['4242-4242-4242-4242', true], ['tok_4111111111111111', true],
      ['tok_visa_4242', false], ['4242424242424241', false]]) {
      assert.equal(await ap.evaluate((x) => window.accrueLooksLikeCard(x), s), want, s);
    }
    await ap.getByLabel('Processor token').fill('4242 4242 4242 4242');
    await ap.getByLabel('Card brand').fill('visa');
    await ap.getByLabel('Last 4 digits').fill('4242');
    await ap.getByLabel('Expiry month').fill('1');
    await ap.getByLabel('Expiry year').fill('2031');
    await ap.getByRole('button', { name: 'Replace payment method' }).click();
    await ap.locator('#pm-error:not([hidden])').waitFor();
    assert.match(await text(ap, '#pm-error'), /looks like a card number/);
    assert.equal(await attr(ap, '#pm-token', 'aria-invalid'), 'true');
    assert.deepEqual(pmRequests, [], 'nothing was sent');
    const r = await api(`/v1/accounts/${ACCOUNT}/payment-method`, ADMIN, {
      method: 'PUT', body: { token: '4242424242424242', brand: 'visa', last4: '4242', exp_month: 1, exp_year: 2031 },
    });
    assert.equal(r.status, 422);
    assert.equal((await get(`/v1/accounts/${ACCOUNT}`, ADMIN)).payment.method.last4, ov.payment.method.last4);
  });

  await step('Payment: a processor token replaces the method; the page then speaks the new language', async () => {
    await ap.getByLabel('Processor token').fill('tok_mc_1881');
    await ap.getByLabel('Card brand').fill('mastercard');
    await ap.getByLabel('Last 4 digits').fill('1881');
    await ap.getByLabel('Billing email').fill('ap@acme.test');
    await ap.getByLabel('Email language').selectOption('de');
    await ap.getByRole('button', { name: 'Replace payment method' }).click();
    await ap.waitForFunction(() => /^Saved/.test(document.getElementById('pm-msg').textContent));
    assert.deepEqual(pmRequests, ['PUT']);
    const o = await get(`/v1/accounts/${ACCOUNT}`, ADMIN);
    assert.deepEqual(o.payment.method, { brand: 'mastercard', last4: '1881', exp_month: 1, exp_year: 2031 });
    assert.equal(o.billing_email, 'ap@acme.test');
    assert.equal(o.email_language, 'de');
    assert.equal(await text(ap, '#p-last4'), '1881');
    assert.equal(await text(ap, '#p-expiry'), '01/2031');
    assert.equal(await text(ap, '#p-email'), 'ap@acme.test');
    await openTab(ap, 'AI credits');
    assert.equal(norm(await ap.locator('#c-base data').textContent()), '10,00 $');
  });
  problems.push(...seenAdmin);
  await adm.close();

  await step('no CSP violation and no script error anywhere', async () => {
    assert.deepEqual(problems, []);
  });
} catch (e) {
  failed++;
  console.log(`not ok - setup\n${(e && e.stack) || e}`);
} finally {
  await browser.close();
}

console.log(`browser run took ${Date.now() - started} ms`);
console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
