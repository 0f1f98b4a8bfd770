// The Manage License page (SPEC §10). Plain JavaScript over accrue's JSON
// API: the token lives only in this tab's sessionStorage and goes out as a
// bearer header; every figure shown is a string the API sent, formatted
// for the account's language and never recomputed here.
'use strict';

(() => {
  const KEY = 'accrue.token';
  const $ = (id) => document.getElementById(id);
  const state = { token: null, me: null, account: null, overview: null, lang: 'en', invoices: null };

  // ------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }

  async function api(path, opts = {}) {
    const headers = { Authorization: 'Bearer ' + state.token };
    if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, {
      method: opts.method || 'GET',
      headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    });
    if (res.status === 401) {
      signOut('The token was not accepted (it may have been revoked). Sign in again.');
      throw new ApiError(401, 'unauthorized');
    }
    if (!res.ok) {
      let detail = res.statusText;
      try { const p = await res.json(); detail = p.detail || p.title || detail; } catch (_) { /* not JSON */ }
      throw new ApiError(res.status, detail);
    }
    if (opts.raw) return res;
    if (res.status === 204) return null;
    return res.json();
  }

  const enc = encodeURIComponent;

  // ------------------------------------------------------------ formatting

  const has = (o, k) => o !== null && typeof o === 'object' && o[k] !== undefined && o[k] !== null;

  function lang() {
    try { return Intl.getCanonicalLocales(state.lang)[0]; } catch (_) { return 'en'; }
  }

  // A money string such as "1234.5000" is formatted as the exact decimal
  // (Intl takes strings), keeping every digit the API sent beyond cents.
  function money(s, currency) {
    const str = String(s);
    const scale = (str.split('.')[1] || '').length;
    const cur = currency || (state.overview && state.overview.currency) || 'USD';
    const nf = new Intl.NumberFormat(lang(), { style: 'currency', currency: cur });
    const min = nf.resolvedOptions().minimumFractionDigits;
    return new Intl.NumberFormat(lang(), {
      style: 'currency', currency: cur,
      minimumFractionDigits: min, maximumFractionDigits: Math.max(min, Math.min(scale, 20)),
    }).format(str);
  }

  function moneyEl(s, currency) {
    const d = document.createElement('data');
    d.value = String(s);
    d.className = 'money';
    d.lang = lang(); // read out in the language it is written in
    d.textContent = money(s, currency);
    return d;
  }

  function toDate(s) {
    return /^\d{4}-\d{2}-\d{2}$/.test(s) ? new Date(s + 'T00:00:00Z') : new Date(s);
  }

  function timeEl(s, withTime) {
    const t = document.createElement('time');
    t.dateTime = s;
    t.lang = lang();
    // Business time is UTC (SPEC §1): shown in UTC, and said so.
    const opts = withTime
      ? { dateStyle: 'medium', timeStyle: 'short', timeZone: 'UTC' }
      : { dateStyle: 'medium', timeZone: 'UTC' };
    t.textContent = new Intl.DateTimeFormat(lang(), opts).format(toDate(s)) + (withTime ? ' UTC' : '');
    return t;
  }

  function put(id, content) {
    const el = typeof id === 'string' ? $(id) : id;
    el.replaceChildren();
    if (content === null || content === undefined) {
      el.textContent = '—';
    } else if (content instanceof Node) {
      el.append(content);
    } else {
      el.textContent = String(content);
    }
  }

  // Each cell carries its column's name, shown beside it on a phone where
  // the table is laid out as blocks.
  function labelCells(table) {
    const names = Array.from(table.tHead.rows[0].cells).map((th) => th.textContent.trim());
    for (const tr of table.tBodies[0].rows) {
      if (tr.cells.length !== names.length) continue;
      Array.from(tr.cells).forEach((td, i) => { if (names[i]) td.dataset.label = names[i]; });
    }
  }

  function cell(tr, content, cls) {
    const td = document.createElement('td');
    if (cls) td.className = cls;
    put(td, content);
    tr.append(td);
    return td;
  }

  const LANGS = { en: 'English', de: 'Deutsch', fr: 'Français', es: 'Español', ja: '日本語' };
  const cap = (s) => (s ? s.charAt(0).toUpperCase() + s.slice(1).replace(/_/g, ' ') : s);

  function announce(msg) { $('live').textContent = msg; }

  function show(el, on) { (typeof el === 'string' ? $(el) : el).hidden = !on; }

  // A full card number typed anywhere is refused before anything is sent,
  // by the same rule as the API's guard (which refuses it again): 13–19
  // digits between group boundaries (up to 3 separators such as space or
  // dash join groups) passing Luhn, or any 13–19 digit window of a longer
  // run; a card number never starts with 0.
  const SEP = /[ \t\-./_\u00a0\u3000\u2010-\u2015]/;
  function digitOf(ch) {
    const c = ch.charCodeAt(0);
    if (c >= 48 && c <= 57) return c - 48;
    if (c >= 0xff10 && c <= 0xff19) return c - 0xff10;
    return -1;
  }
  function luhn(d) {
    let sum = 0;
    for (let i = 0; i < d.length; i++) {
      let n = d[d.length - 1 - i];
      if (i % 2 === 1) { n *= 2; if (n > 9) n -= 9; }
      sum += n;
    }
    return sum % 10 === 0;
  }
  function runHasPan(run, bounds) {
    if (run.length < 13) return false;
    for (let i = 0; i < bounds.length; i++) {
      for (let j = i + 1; j < bounds.length; j++) {
        const a = bounds[i], b = bounds[j];
        if (b - a > 19) break;
        if (b - a >= 13 && run[a] !== 0 && luhn(run.slice(a, b))) return true;
      }
    }
    if (run.length <= 19) return false;
    for (let len = 13; len <= 19; len++) {
      for (let a = 0; a + len <= run.length; a++) {
        if (run[a] !== 0 && luhn(run.slice(a, a + len))) return true;
      }
    }
    return false;
  }
  function looksLikeCard(text) {
    let run = [], bounds = [0], seps = 0;
    const end = () => { bounds.push(run.length); const f = runHasPan(run, bounds); run = []; bounds = [0]; return f; };
    for (const ch of String(text)) {
      const d = digitOf(ch);
      if (d >= 0) {
        if (seps > 0) bounds.push(run.length);
        run.push(d);
        seps = 0;
      } else if (SEP.test(ch) && run.length && seps < 3) {
        seps++;
      } else {
        if (end()) return true;
        seps = 0;
      }
    }
    return end();
  }
  window.accrueLooksLikeCard = looksLikeCard;

  // ------------------------------------------------------------ sign in

  function signOut(msg) {
    sessionStorage.removeItem(KEY);
    state.token = null; state.me = null; state.overview = null; state.account = null;
    show('app', false); show('who', false); show('signin', true);
    const err = $('signin-error');
    err.textContent = msg || '';
    show(err, !!msg);
    $('token').value = '';
    $('token').focus();
  }

  async function signIn(token) {
    state.token = token;
    try {
      state.me = await api('/v1/me');
    } catch (e) {
      if (e.status !== 401) signOut('Sign-in failed: ' + e.message);
      return;
    }
    sessionStorage.setItem(KEY, token);
    show('signin', false); show('app', true); show('who', true);
    const me = state.me;
    $('who-role').textContent = me.role === 'account' ? 'Signed in to ' + me.account_id : 'Signed in as ' + me.role;
    const readsAll = me.role === 'admin' || me.role === 'auditor';
    show('picker', readsAll);
    if (readsAll) await loadPicker();
    if (!readsAll && me.role !== 'account') {
      appError('A ' + me.role + ' token cannot read an account on this page. Sign in with an account token.');
      return;
    }
    await route();
  }

  const canWrite = () => state.me && state.me.role === 'admin';

  async function loadPicker() {
    const sel = $('account-select');
    sel.replaceChildren();
    let after = null;
    // Pages of 500 until the last one (bounded: 20 pages).
    for (let page = 0; page < 20; page++) {
      const q = '/v1/accounts?limit=500' + (after ? '&after=' + enc(after) : '');
      const list = await api(q);
      for (const a of list.accounts) {
        const o = document.createElement('option');
        o.value = a.id;
        o.textContent = a.name + ' (' + a.id + ')';
        sel.append(o);
      }
      if (!list.next_after) break;
      after = list.next_after;
    }
  }

  function wantedAccount() {
    const m = /(?:^|[#&])account=([^&]*)/.exec(location.hash);
    if (m) return decodeURIComponent(m[1]);
    if (state.me.role === 'account') return state.me.account_id;
    const sel = $('account-select');
    return sel.options.length ? sel.options[0].value : null;
  }

  function appError(msg) {
    const e = $('app-error');
    e.textContent = msg || '';
    show(e, !!msg);
  }

  async function route() {
    const id = wantedAccount();
    show('account', false);
    if (!id) { appError('There are no accounts yet.'); return; }
    if (state.me.role !== 'account') $('account-select').value = id;
    appError('');
    try {
      await loadAccount(id);
    } catch (e) {
      if (e.status === 401) return;
      state.overview = null;
      appError(e.status === 404 ? 'No account "' + id + '" is visible with this token.' : 'Could not load the account: ' + e.message);
    }
  }

  // ------------------------------------------------------------ the account

  async function loadAccount(id) {
    const [ov, acts, sess, inv] = await Promise.all([
      api('/v1/accounts/' + enc(id)),
      api('/v1/accounts/' + enc(id) + '/activations').catch(() => null),
      api('/v1/accounts/' + enc(id) + '/sessions').catch(() => null),
      api('/v1/accounts/' + enc(id) + '/invoices'),
    ]);
    state.account = id;
    state.overview = ov;
    renderOverview(ov);
    renderActivations(acts);
    renderSessions(sess, ov);
    renderInvoices(inv);
    fillPaymentForm(ov);
    for (const n of document.querySelectorAll('.role-note')) show(n, !canWrite());
    $('limit-fields').disabled = !canWrite();
    $('pm-fields').disabled = !canWrite();
    show('account', true);
    document.title = ov.name + ' · Manage License';
  }

  async function refreshOverview() {
    state.overview = await api('/v1/accounts/' + enc(state.account));
    renderOverview(state.overview);
  }

  function renderOverview(ov) {
    state.lang = ov.email_language || 'en';
    put('account-name', ov.name);
    put('account-id', 'Account ' + ov.id);
    put('f-serial', ov.serial_number);
    put('f-frequency', cap(ov.billing_frequency));
    put('f-data-management', ov.plan.data_management ? 'Included' : 'Not included');
    const lic = ov.license || null;
    put('f-license-status', lic ? cap(lic.status) : null);
    put('f-term-end', lic && lic.term_end ? timeEl(lic.term_end, false) : (lic ? 'Renews with the subscription' : null));
    put('f-last-sync', lic && lic.last_sync_at ? timeEl(lic.last_sync_at, true) : 'Never');

    for (const kind of ['full', 'viewer']) {
      const card = $('stat-' + kind);
      for (const f of ['licensed', 'in_use', 'remaining']) {
        put(card.querySelector('[data-f="' + f + '"]'), String(ov.seats[kind][f]));
      }
    }

    const c = ov.credits;
    put('stat-credits-used', moneyEl(c.used));
    put('stat-credits-available', moneyEl(c.available));
    // The bar's share is for the eye only; the figures beside it are the API's.
    const used = Number(c.used), avail = Number(c.available);
    const pct = used + avail > 0 ? Math.min(100, Math.round((used / (used + avail)) * 100)) : 0;
    const bar = $('credits-bar');
    bar.setAttribute('aria-valuenow', String(pct));
    bar.setAttribute('aria-valuetext', money(c.used) + ' used, ' + money(c.available) + ' available');
    $('credits-fill').style.width = pct + '%';
    bar.classList.toggle('full', avail <= 0 && used > 0);

    // Payment & Billing card: red after a failed payment, with the dunning
    // dates once the overview carries them (SPEC §8).
    const p = ov.payment || {};
    const failed = p.status && p.status !== 'ok';
    $('card-payment').classList.toggle('failed', !!failed);
    put('pay-status', failed ? 'Payment ' + String(p.status).replace(/_/g, ' ') + ': please update your payment method.' : 'Payments are up to date.');
    put('pay-method', p.method ? cap(p.method.brand) + ' ending in ' + p.method.last4 : 'No saved payment method.');
    const d = has(p, 'dunning') ? p.dunning : null;
    show('dunning', !!d);
    if (d) {
      put('dunning-invoice', d.invoice || null);
      put('dunning-attempt', has(d, 'attempt') ? String(d.attempt) : null);
      put('dunning-next-retry', d.next_retry_at ? timeEl(d.next_retry_at, true) : null);
      put('dunning-suspends', d.suspends_at ? timeEl(d.suspends_at, true) : null);
    }
    const period = document.createDocumentFragment();
    period.append(timeEl(ov.billing_period.start, false), ' – ', timeEl(ov.billing_period.end, false));
    put('pay-period', period);

    // AI credits tab.
    const limitSet = Number(c.additional_limit) > 0;
    let sub;
    if (c.pending_unsubscribe) {
      const f = document.createDocumentFragment();
      f.append('Unsubscribe pending: the limit of ', moneyEl(c.additional_limit), ' ends at the next reset, ', timeEl(ov.next_credit_reset, true));
      sub = f;
    } else {
      sub = limitSet ? 'Subscribed' : 'Not subscribed (base credits only)';
    }
    put('c-subscription', sub);
    $('c-subscription').dataset.pending = String(!!c.pending_unsubscribe);
    put('c-base', moneyEl(c.base));
    put('c-limit', moneyEl(c.additional_limit));
    show('c-next-limit-row', has(c, 'limit_from_next_period'));
    if (has(c, 'limit_from_next_period')) put('c-next-limit', moneyEl(c.limit_from_next_period));
    put('c-used', moneyEl(c.used));
    put('c-additional-used', moneyEl(c.additional_used));
    put('c-available', moneyEl(c.available));
    put('c-reset', timeEl(ov.next_credit_reset, true));
    $('unsubscribe').disabled = !limitSet || c.pending_unsubscribe;
  }

  function renderActivations(list) {
    const tb = $('activations').tBodies[0];
    tb.replaceChildren();
    if (!list) { put('activations-used', 'Activations are not available.'); return; }
    put('activations-used', list.used + ' of ' + list.max + ' activations in use');
    for (const a of list.activations) {
      const tr = document.createElement('tr');
      tr.dataset.server = a.server_id;
      cell(tr, a.server_id, 'mono');
      cell(tr, a.hostname || null);
      cell(tr, timeEl(a.activated_at, true));
      cell(tr, a.last_sync_at ? timeEl(a.last_sync_at, true) : 'Never');
      cell(tr, cap(a.status) + (a.released_by ? ' (' + a.released_by + ')' : ''));
      const td = cell(tr, '');
      if (a.status === 'active' && canWrite()) td.append(releaseButton(a));
      tb.append(tr);
    }
    if (!list.activations.length) {
      const tr = document.createElement('tr');
      const td = cell(tr, 'No server has activated this license yet.');
      td.colSpan = 6;
      tb.append(tr);
    }
    labelCells($('activations'));
    put('activations-note', canWrite() ? 'Release a license to free its slot for a new server.' : 'To release a license, ask an administrator or release it from the product server.');
  }

  function releaseButton(a) {
    const wrap = document.createElement('span');
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'secondary';
    b.textContent = 'Release License';
    b.setAttribute('aria-label', 'Release License of server ' + a.server_id);
    b.addEventListener('click', () => {
      const yes = document.createElement('button');
      yes.type = 'button';
      yes.textContent = 'Confirm release';
      yes.setAttribute('aria-label', 'Confirm release of server ' + a.server_id);
      const no = document.createElement('button');
      no.type = 'button';
      no.className = 'secondary';
      no.textContent = 'Cancel';
      no.addEventListener('click', () => { wrap.replaceChildren(b); b.focus(); });
      yes.addEventListener('click', async () => {
        yes.disabled = true;
        try {
          await api('/v1/accounts/' + enc(state.account) + '/activations/' + enc(a.server_id), { method: 'DELETE' });
          announce('Released the license of server ' + a.server_id + '.');
          const [acts] = await Promise.all([
            api('/v1/accounts/' + enc(state.account) + '/activations'),
            refreshOverview(),
          ]);
          renderActivations(acts);
          $('activations-used').focus();
        } catch (e) {
          yes.disabled = false;
          announce('Release failed: ' + e.message);
        }
      });
      wrap.replaceChildren(yes, ' ', no);
      yes.focus();
    });
    wrap.append(b);
    return wrap;
  }

  function renderSessions(list, ov) {
    const s = (list && list.summary) || ov.sessions || null;
    const users = (t) => (s ? s[t].users + ' (' + s[t].sessions + ' sessions)' : null);
    put('s-total', s ? String(s.total) : null);
    put('s-full', users('full'));
    put('s-viewer', users('viewer'));
    put('s-system-manager', users('system_manager'));
    put('s-web', s ? String(s.web) : null);
    put('s-addin', s ? String(s.addin) : null);
    const tb = $('sessions').tBodies[0];
    tb.replaceChildren();
    const rows = (list && list.sessions) || [];
    for (const x of rows) {
      const tr = document.createElement('tr');
      cell(tr, x.id, 'mono');
      cell(tr, x.user_name);
      cell(tr, timeEl(x.last_accessed_at, true));
      cell(tr, cap(x.user_type));
      cell(tr, x.module || null);
      cell(tr, x.client === 'addin' ? 'Add-in' : 'Web');
      tb.append(tr);
    }
    if (!rows.length) {
      const tr = document.createElement('tr');
      cell(tr, 'No active sessions.').colSpan = 6;
      tb.append(tr);
    }
    labelCells($('sessions'));
  }

  // Invoices and, once they exist (SPEC §9), credit notes in one list.
  function renderInvoices(list) {
    state.invoices = list;
    $('period-from').value = list.from;
    $('period-to').value = list.to;
    const range = document.createDocumentFragment();
    const n = list.invoices.length;
    range.append(n + (n === 1 ? ' document' : ' documents') + ' from ', timeEl(list.from, false), ' to ', timeEl(list.to, false));
    put('billing-range', range);
    const tb = $('invoices').tBodies[0];
    tb.replaceChildren();
    for (const i of list.invoices) {
      const credit = i.type === 'credit_note';
      const tr = document.createElement('tr');
      tr.dataset.number = i.number;
      cell(tr, timeEl(i.date, false));
      const num = cell(tr, i.number, 'mono');
      if (credit) { const t = document.createElement('span'); t.className = 'tag'; t.textContent = 'Credit note'; num.append(' ', t); }
      cell(tr, i.subscription || null);
      cell(tr, cap(i.status));
      cell(tr, moneyEl(i.total, i.currency), 'num');
      const td = cell(tr, '');
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'secondary';
      b.textContent = 'Download PDF';
      b.setAttribute('aria-label', 'Download PDF of ' + i.number);
      b.addEventListener('click', () => downloadPdf(i.number, credit, b));
      td.append(b);
      tb.append(tr);
    }
    if (!n) {
      const tr = document.createElement('tr');
      cell(tr, 'No invoices in this period.').colSpan = 6;
      tb.append(tr);
    }
    labelCells($('invoices'));
  }

  // The PDF needs the bearer header, so it is fetched and handed to the
  // browser as a download (no token in a URL, nothing cached by a link).
  async function downloadPdf(number, credit, button) {
    button.disabled = true;
    try {
      const res = await api('/v1/' + (credit ? 'credit-notes/' : 'invoices/') + enc(number) + '/pdf', { raw: true });
      const blob = await res.blob();
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url;
      a.download = number + '.pdf';
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      announce('Downloaded ' + number + '.pdf');
    } catch (e) {
      announce('Download failed: ' + e.message);
    } finally {
      button.disabled = false;
    }
  }

  async function applyPeriod(ev) {
    ev.preventDefault();
    const from = $('period-from').value, to = $('period-to').value;
    const q = [];
    if (from) q.push('from=' + enc(from));
    if (to) q.push('to=' + enc(to));
    try {
      renderInvoices(await api('/v1/accounts/' + enc(state.account) + '/invoices' + (q.length ? '?' + q.join('&') : '')));
    } catch (e) {
      put('billing-range', 'Could not apply the period: ' + e.message);
    }
  }

  // ------------------------------------------------------------ AI credits

  let pendingOrder = null;

  function reviewLimit(ev) {
    ev.preventDefault();
    const v = $('limit').value.trim();
    const msg = $('credits-msg');
    if (!/^\d{1,3}(\.\d{1,2})?$/.test(v) || Number(v) <= 0 || Number(v) > 500) {
      msg.textContent = 'Enter a limit in USD above 0 and at most 500.00, e.g. 25.00.';
      $('limit').setAttribute('aria-invalid', 'true');
      $('limit').focus();
      return;
    }
    $('limit').removeAttribute('aria-invalid');
    msg.textContent = '';
    const c = state.overview.credits;
    const subscribed = Number(c.additional_limit) > 0 && !c.pending_unsubscribe;
    openOrder({
      kind: 'limit', limit: v,
      what: subscribed ? 'Change the additional credits limit' : 'Subscribe to additional AI credits',
      current: c.additional_limit, next: v, when: document.createTextNode('At once'),
    });
  }

  function reviewUnsubscribe() {
    const c = state.overview.credits;
    const when = document.createDocumentFragment();
    when.append('At the next credit reset, ', timeEl(state.overview.next_credit_reset, true), '; until then the current limit stays');
    openOrder({ kind: 'unsubscribe', what: 'Unsubscribe from additional AI credits', current: c.additional_limit, next: '0.00', when });
  }

  function openOrder(o) {
    pendingOrder = o;
    put('order-what', o.what);
    put('order-current', moneyEl(o.current));
    put('order-new', moneyEl(o.next));
    put('order-when', o.when);
    show('order', true);
    $('order').focus();
  }

  function closeOrder() { pendingOrder = null; show('order', false); }

  async function confirmOrder() {
    const o = pendingOrder;
    if (!o) return;
    const path = '/v1/accounts/' + enc(state.account) + '/credit-subscription';
    const msg = $('credits-msg');
    $('order-confirm').disabled = true;
    try {
      await (o.kind === 'limit'
        ? api(path, { method: 'PUT', body: { limit: o.limit } })
        : api(path, { method: 'DELETE' }));
      await refreshOverview();
      closeOrder();
      $('limit').value = '';
      msg.textContent = o.kind === 'limit'
        ? 'Done: the limit is now ' + money(state.overview.credits.additional_limit) + '.'
        : 'Done: unsubscribe is pending until the next credit reset.';
    } catch (e) {
      msg.textContent = 'Refused: ' + e.message;
    } finally {
      $('order-confirm').disabled = false;
    }
  }

  // ------------------------------------------------------------ payment

  function fillPaymentForm(ov) {
    const m = ov.payment && ov.payment.method;
    put('p-brand', m ? cap(m.brand) : null);
    put('p-last4', m ? m.last4 : null);
    put('p-expiry', m ? String(m.exp_month).padStart(2, '0') + '/' + m.exp_year : null);
    put('p-email', ov.billing_email);
    put('p-language', (LANGS[ov.email_language] || ov.email_language) + ' (' + ov.email_language + ')');
    $('pm-email').value = ov.billing_email || '';
    $('pm-language').value = LANGS[ov.email_language] ? ov.email_language : 'en';
  }

  function pmError(msg, field) {
    const e = $('pm-error');
    e.textContent = msg || '';
    show(e, !!msg);
    for (const el of $('pm-form').querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    if (field) { field.setAttribute('aria-invalid', 'true'); field.focus(); }
  }

  async function replacePayment(ev) {
    ev.preventDefault();
    $('pm-msg').textContent = '';
    const form = $('pm-form');
    for (const el of form.querySelectorAll('input')) {
      if (looksLikeCard(el.value)) {
        pmError('That looks like a card number. Enter the token from your payment processor instead; card numbers are never sent.', el);
        return;
      }
    }
    const v = (id) => $(id).value.trim();
    const body = {
      token: v('pm-token'), brand: v('pm-brand'), last4: v('pm-last4'),
      exp_month: Number(v('pm-exp-month')), exp_year: Number(v('pm-exp-year')),
      billing_email: v('pm-email'), email_language: $('pm-language').value,
    };
    const missing = [['pm-token', body.token], ['pm-brand', body.brand]].find(([, x]) => !x);
    if (missing) { pmError('Fill in every field.', $(missing[0])); return; }
    if (!/^\d{4}$/.test(body.last4)) { pmError('The last 4 digits are exactly 4 digits.', $('pm-last4')); return; }
    if (!(body.exp_month >= 1 && body.exp_month <= 12)) { pmError('The expiry month is 1 to 12.', $('pm-exp-month')); return; }
    if (!(body.exp_year >= 2000 && body.exp_year <= 2100)) { pmError('The expiry year has four digits.', $('pm-exp-year')); return; }
    if (!body.billing_email.includes('@')) { pmError('Enter the billing email address.', $('pm-email')); return; }
    pmError('');
    try {
      await api('/v1/accounts/' + enc(state.account) + '/payment-method', { method: 'PUT', body });
      await refreshOverview();
      fillPaymentForm(state.overview);
      for (const id of ['pm-token', 'pm-brand', 'pm-last4', 'pm-exp-month', 'pm-exp-year']) $(id).value = '';
      $('pm-msg').textContent = 'Saved: the payment method was replaced.';
    } catch (e) {
      pmError('Refused: ' + e.message);
    }
  }

  // ------------------------------------------------------------ tabs

  function tabs() { return Array.from(document.querySelectorAll('[role="tab"]')); }

  function select(tab, focus) {
    for (const t of tabs()) {
      const on = t === tab;
      t.setAttribute('aria-selected', String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute('aria-controls')).hidden = !on;
    }
    if (focus) tab.focus();
  }

  function onTabKey(ev) {
    const all = tabs();
    const i = all.indexOf(ev.target);
    if (i < 0) return;
    let j = null;
    if (ev.key === 'ArrowRight') j = (i + 1) % all.length;
    else if (ev.key === 'ArrowLeft') j = (i - 1 + all.length) % all.length;
    else if (ev.key === 'Home') j = 0;
    else if (ev.key === 'End') j = all.length - 1;
    if (j === null) return;
    ev.preventDefault();
    select(all[j], true);
  }

  // ------------------------------------------------------------ wiring

  document.addEventListener('DOMContentLoaded', () => {
    $('signin-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const t = $('token').value.trim();
      if (!t) { signOut('Paste a token to sign in.'); return; }
      signIn(t);
    });
    $('signout').addEventListener('click', () => signOut());
    $('account-select').addEventListener('change', (ev) => { location.hash = 'account=' + enc(ev.target.value); });
    window.addEventListener('hashchange', () => { if (state.me) route(); });
    for (const t of tabs()) t.addEventListener('click', () => select(t, false));
    $('tabs').addEventListener('keydown', onTabKey);
    $('period-form').addEventListener('submit', applyPeriod);
    $('limit-form').addEventListener('submit', reviewLimit);
    $('unsubscribe').addEventListener('click', reviewUnsubscribe);
    $('order-confirm').addEventListener('click', confirmOrder);
    $('order-cancel').addEventListener('click', () => { closeOrder(); $('limit').focus(); });
    $('pm-form').addEventListener('submit', replacePayment);
    const saved = sessionStorage.getItem(KEY);
    if (saved) signIn(saved); else signOut();
  });
})();
