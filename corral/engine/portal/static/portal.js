// Corral admin portal: the little JavaScript the server-rendered pages need.
// - api(): the engine's REST API through /portal/api (session cookie + CSRF header)
// - live updates from /portal/stream (server-sent events): states, events, task progress
// - forms that submit JSON and show each API error next to the field it names (the New VM form: vmform.js)
// - VM actions, the plan for a chosen host, host add/maintenance, the serial console
'use strict';

(() => {
  const prefix = document.body.dataset.prefix || '/portal';
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : '';
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const label = (s) => String(s || '').replace(/_/g, ' ');

  // ---------------------------------------------------------------- REST API
  async function api(method, path, body) {
    const opts = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (method !== 'GET') opts.headers['X-CSRF-Token'] = csrf;
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(prefix + '/api' + path, opts);
    } catch (err) {
      return { ok: false, status: 0, data: { code: 'network', field: null,
        message: 'The engine does not answer (' + err.message + ').' } };
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (err) { data = { code: 'error', message: text.slice(0, 300) }; }
    }
    if (resp.status === 401) {
      window.location.href = prefix + '/login?next=' + encodeURIComponent(location.pathname + location.search);
    }
    return { ok: resp.ok, status: resp.status, data };
  }

  // ---------------------------------------------------------------- errors next to fields
  function findField(root, path) {
    let p = path;
    while (p) {
      const el = root.querySelector('[data-path="' + CSS.escape(p) + '"]');
      if (el) return el;
      const cut = p.lastIndexOf('.');
      if (cut < 0) break;
      p = p.slice(0, cut);
    }
    return null;
  }

  function clearErrors(root) {
    root.querySelectorAll('.field-error').forEach((el) => el.remove());
    root.querySelectorAll('[aria-invalid="true"]').forEach((el) => {
      el.removeAttribute('aria-invalid');
      const ids = (el.getAttribute('aria-describedby') || '').split(' ').filter((i) => i && !i.startsWith('err-'));
      if (ids.length) el.setAttribute('aria-describedby', ids.join(' '));
      else el.removeAttribute('aria-describedby');
    });
    root.querySelectorAll('[data-form-error], [data-action-error]').forEach((b) => { b.hidden = true; b.textContent = ''; });
  }

  let errorSeq = 0;
  function showErrors(root, data) {
    const d = data || {};
    const list = Array.isArray(d.errors) && d.errors.length ? d.errors : [{ field: d.field, message: d.message || d.code || 'error' }];
    const general = [];
    let first = null;
    for (const err of list) {
      const el = err.field ? findField(root, err.field) : null;
      if (!el) {
        general.push((err.field ? err.field + ': ' : '') + err.message);
        continue;
      }
      const p = document.createElement('p');
      p.className = 'field-error';
      p.id = 'err-' + (++errorSeq);
      p.dataset.errorFor = err.field;
      p.textContent = err.message;
      if (el.matches('input, select, textarea')) {
        el.setAttribute('aria-invalid', 'true');
        el.setAttribute('aria-describedby', ((el.getAttribute('aria-describedby') || '') + ' ' + p.id).trim());
        const box = el.closest('.field') || el.parentElement;
        box.append(p);
      } else {
        const legend = el.querySelector(':scope > legend');
        if (legend) legend.after(p); else el.prepend(p);
      }
      first = first || el;
    }
    if (general.length) {
      const banner = root.querySelector('[data-form-error], [data-action-error]');
      if (banner) {
        banner.textContent = general.join(' ');
        banner.hidden = false;
        if (!first) banner.scrollIntoView({ block: 'nearest' });
      }
    }
    if (first) {
      if (first.matches('input, select, textarea')) first.focus();
      else first.scrollIntoView({ block: 'nearest' });
    }
  }

  // ---------------------------------------------------------------- tasks (long operations)
  async function watchTask(task, statusEl) {
    const row = document.createElement('div');
    row.dataset.task = task.id;
    const bar = document.createElement('progress');
    bar.setAttribute('aria-label', label(task.kind));
    const msg = document.createElement('span');
    msg.dataset.taskMessage = '';
    row.append(bar, ' ', msg);
    if (statusEl) statusEl.append(row);
    let t = task;
    while (t.state === 'pending' || t.state === 'running') {
      msg.textContent = label(t.kind) + ': ' + (t.message || t.state) + '…';
      await sleep(400);
      const r = await api('GET', '/tasks/' + t.id);
      if (r.ok) t = r.data;
      else if (r.status === 404 || r.status === 401) break;
    }
    bar.max = 1;
    bar.value = 1;
    if (t.state === 'succeeded') {
      msg.textContent = label(t.kind) + ': done.';
      row.classList.add('done');
      setTimeout(() => row.remove(), 4000);
    } else {
      row.remove();
    }
    return t;
  }

  // ---------------------------------------------------------------- live updates (SSE)
  function setText(sel, text) { document.querySelectorAll(sel).forEach((el) => { el.textContent = text; }); }

  function onVm(v) {
    document.querySelectorAll('[data-vm-state="' + CSS.escape(v.id) + '"]').forEach((el) => {
      el.textContent = label(v.state);
      el.className = 'state state-' + v.state;
    });
    setText('[data-vm-reason="' + CSS.escape(v.id) + '"]', v.state_reason || '');
    document.querySelectorAll('[data-vm-host="' + CSS.escape(v.id) + '"]').forEach((el) => {
      el.replaceChildren();
      if (v.host_id) {
        const a = document.createElement('a');
        a.href = prefix + '/hosts/' + v.host_id;
        a.textContent = v.host_name || v.host_id;
        el.append(a);
      } else {
        const s = document.createElement('span');
        s.className = 'muted';
        s.textContent = '—';
        el.append(s);
      }
    });
    if (v.host_id) {
      document.querySelectorAll('[data-vm-last-host="' + CSS.escape(v.id) + '"]').forEach((el) => {
        const a = document.createElement('a');
        a.href = prefix + '/hosts/' + v.host_id;
        a.textContent = v.host_name || v.host_id;
        el.replaceChildren(a);
      });
    }
    document.dispatchEvent(new CustomEvent('corral:vm', { detail: v }));
  }

  function onHost(h) {
    document.querySelectorAll('[data-host-state="' + CSS.escape(h.id) + '"]').forEach((el) => {
      el.textContent = label(h.state);
      el.className = 'state state-' + h.state;
    });
    setText('[data-host-reason="' + CSS.escape(h.id) + '"]', h.state_reason || '');
    document.dispatchEvent(new CustomEvent('corral:host', { detail: h }));
  }

  const SEVERITY = { info: 0, warning: 1, error: 2 };
  function objectCell(e) {
    const td = document.createElement('td');
    if ((e.object_type === 'vm' || e.object_type === 'host') && e.object_id) {
      const a = document.createElement('a');
      a.href = prefix + '/' + e.object_type + 's/' + e.object_id;
      a.textContent = e.object_name || e.object_id;
      td.append(a);
    } else {
      td.textContent = e.object_name || e.object_id || '';
    }
    return td;
  }

  function onEvent(e) {
    document.querySelectorAll('table[data-events]').forEach((table) => {
      const type = table.dataset.objectType;
      const id = table.dataset.objectId;
      const min = table.dataset.minSeverity;
      if (type && e.object_type !== type) return;
      if (id && e.object_id !== id) return;
      if (min && (SEVERITY[e.severity] || 0) < (SEVERITY[min] || 0)) return;
      const body = table.tBodies[0];
      if (body.querySelector('tr[data-event-id="' + e.id + '"]')) return;
      body.querySelectorAll('tr.empty').forEach((r) => r.remove());
      const tr = document.createElement('tr');
      tr.className = 'sev-' + e.severity + ' fresh';
      tr.dataset.eventId = e.id;
      const time = document.createElement('td');
      time.className = 'nowrap';
      time.textContent = String(e.time || '').replace('T', ' ').replace(/\.\d+/, '').replace(/(\+00:00|Z)$/, ' UTC');
      const sev = document.createElement('td');
      const badge = document.createElement('span');
      badge.className = 'sev sev-' + e.severity;
      badge.textContent = e.severity;
      sev.append(badge);
      const msg = document.createElement('td');
      msg.textContent = e.message;
      tr.append(time, sev, objectCell(e), msg);
      body.prepend(tr);
      while (body.rows.length > 100) body.deleteRow(body.rows.length - 1);
    });
  }

  function onTask(t) {
    document.querySelectorAll('[data-task="' + CSS.escape(t.id) + '"]').forEach((row) => {
      const msg = row.querySelector('[data-task-message]');
      if (msg && (t.state === 'pending' || t.state === 'running')) msg.textContent = label(t.kind) + ': ' + (t.message || t.state) + '…';
      if (t.state === 'succeeded' || t.state === 'failed') {
        const bar = row.querySelector('progress');
        if (bar) { bar.max = 1; bar.value = 1; }
      }
    });
    document.dispatchEvent(new CustomEvent('corral:task', { detail: t }));
  }

  function live() {
    if (!document.body.dataset.live || !window.EventSource) return;
    const status = document.getElementById('live-status');
    const set = (text, state) => { if (status) { status.textContent = text; status.dataset.state = state; } };
    const last = document.body.dataset.lastEvent;
    const es = new EventSource(prefix + '/stream' + (last ? '?after=' + encodeURIComponent(last) : ''));
    es.onopen = () => set('live', 'on');
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) set('live updates stopped: reload the page', 'stopped');
      else set('live: reconnecting', 'off');
    };
    const handle = (fn) => (msg) => { try { fn(JSON.parse(msg.data)); } catch (err) { console.warn('live update', err); } };
    es.addEventListener('vm', handle(onVm));
    es.addEventListener('host', handle(onHost));
    es.addEventListener('event', handle(onEvent));
    es.addEventListener('task', handle(onTask));
    window.addEventListener('pagehide', () => es.close());
    window.corralLive = es;
  }

  // ---------------------------------------------------------------- plan
  function cell(tag, text, cls) {
    const el = document.createElement(tag);
    if (cls) el.className = cls;
    if (text !== undefined && text !== null) el.textContent = text;
    return el;
  }

  function renderPlan(box, p) {
    const counts = { native: 0, translated: 0, refused: 0 };
    for (const d of p.decisions) counts[d.outcome] = (counts[d.outcome] || 0) + 1;
    const summary = cell('p', null, 'plan-summary');
    summary.append(cell('strong', p.host), ' (' + (p.flavor || '?') + ' flavor, ' + (p.guest_type || '?').toUpperCase() + ' guest): ');
    summary.append(cell('span', counts.native + ' native', 'outcome outcome-native'), ' ');
    summary.append(cell('span', counts.translated + ' translated', 'outcome outcome-translated'), ' ');
    summary.append(cell('span', counts.refused + ' refused', 'outcome outcome-refused'), ' ');
    summary.append(p.ok ? '— the host can run this VM as planned.' : '— the host refuses some settings: it cannot start this VM.');
    const table = cell('table', null, 'grid plan');
    table.id = 'plan-table';
    table.dataset.host = p.host;
    table.append(cell('caption', 'Plan for ' + p.host, 'sr-only'));
    const head = table.createTHead().insertRow();
    for (const h of ['Setting', 'Outcome', 'What the host does']) {
      const th = cell('th', h);
      th.scope = 'col';
      head.append(th);
    }
    const body = table.createTBody();
    for (const d of p.decisions) {
      const tr = body.insertRow();
      tr.className = 'cell-' + d.outcome;
      tr.dataset.path = d.path;
      tr.dataset.outcome = d.outcome;
      const th = cell('th', null);
      th.scope = 'row';
      th.append(cell('code', d.path));
      th.append(cell('br'), cell('small', d.feature, 'muted'));
      const oc = cell('td');
      oc.append(cell('span', d.outcome, 'outcome outcome-' + d.outcome));
      tr.append(th, oc, cell('td', d.detail));
    }
    box.replaceChildren(summary, table);
  }

  // ---------------------------------------------------------------- VM page
  const ALLOWED = {
    start: ['down', 'crashed'], shutdown: ['up', 'paused'], stop: ['up', 'paused', 'shutting_down', 'crashed'],
    reboot: ['up'], pause: ['up'], resume: ['paused'], delete: ['down', 'crashed'], migrate: ['up'],
  };

  function vmPage() {
    const root = document.getElementById('vm');
    if (!root) return;
    const id = root.dataset.vm;
    const external = root.dataset.external === 'yes';
    const buttons = Array.from(root.querySelectorAll('[data-vm-action]'));
    const statusEl = root.querySelector('[data-task-status]');
    const hostSel = document.getElementById('plan-host');
    const planBox = document.getElementById('plan');
    let busy = 0;
    let planRefused = false;

    const refresh = () => {
      const state = root.dataset.state;
      for (const b of buttons) {
        const action = b.dataset.vmAction;
        let off = !(ALLOWED[action] || []).includes(state) || busy > 0;
        if (external && (action === 'start' || action === 'delete')) off = true;
        if (action === 'start' && planRefused) off = true;
        b.disabled = off;
      }
    };

    async function refreshDevices() {
      const box = document.getElementById('devices');
      if (!box) return;
      try {
        const resp = await fetch(box.dataset.devicesUrl, { credentials: 'same-origin' });
        if (resp.ok) box.innerHTML = await resp.text();
      } catch (err) { /* the next change retries */ }
    }

    document.addEventListener('corral:vm', (e) => {
      if (e.detail.id !== id) return;
      const changed = e.detail.state !== root.dataset.state;
      root.dataset.state = e.detail.state;
      refresh();
      if (changed && ['up', 'down', 'paused', 'crashed'].includes(e.detail.state)) refreshDevices();
    });

    async function loadPlan() {
      if (!hostSel || !planBox) return;
      clearErrors(root);
      const host = hostSel.value;
      planRefused = false;
      if (!host) {
        planBox.replaceChildren(cell('p', 'Automatic placement: the scheduler picks a host whose flavor can run every ' +
          'setting (refused settings exclude a host). Choose a host to see its plan.', 'muted'));
        refresh();
        return;
      }
      planBox.setAttribute('aria-busy', 'true');
      planBox.replaceChildren(cell('p', 'Asking ' + host + ' for its plan…', 'muted'));
      const r = await api('GET', '/vms/' + encodeURIComponent(id) + '/plan?host=' + encodeURIComponent(host));
      planBox.removeAttribute('aria-busy');
      if (!r.ok) {
        planBox.replaceChildren();
        showErrors(root, Object.assign({}, r.data, { field: (r.data && r.data.field) || 'host' }));
        return;
      }
      renderPlan(planBox, r.data);
      planRefused = !r.data.ok;
      refresh();
    }

    async function act(action) {
      clearErrors(root);
      if (action === 'delete') {
        if (!window.confirm('Delete this VM? Its definition is removed from the host; disk images stay.')) return;
        const r = await api('DELETE', '/vms/' + encodeURIComponent(id));
        if (r.ok) window.location.href = prefix + '/vms';
        else showErrors(root, r.data);
        return;
      }
      let path = '/vms/' + encodeURIComponent(id) + '/' + action;
      if (action === 'start' && hostSel && hostSel.value) path += '?host=' + encodeURIComponent(hostSel.value);
      // a migration goes to the host chosen in the plan's list unless it is the current one (issue 13)
      const current = root.querySelector('[data-vm-host] a');
      const body = action !== 'migrate' ? undefined
        : (hostSel && hostSel.value && (!current || current.textContent !== hostSel.value) ? { host: hostSel.value } : {});
      busy += 1;
      refresh();
      try {
        const r = await api('POST', path, body);
        if (!r.ok) {
          showErrors(root, r.data);
          return;
        }
        const t = await watchTask(r.data, statusEl);
        if (t.state === 'failed') showErrors(root, t.error);
      } finally {
        busy -= 1;
        refresh();
      }
    }

    for (const b of buttons) b.addEventListener('click', () => act(b.dataset.vmAction));
    if (hostSel) {
      hostSel.addEventListener('change', loadPlan);
      if (hostSel.value) loadPlan();
    }
    // tasks already running when the page loaded
    root.querySelectorAll('[data-task-status] [data-task]').forEach(async (row) => {
      busy += 1;
      refresh();
      const r = await api('GET', '/tasks/' + row.dataset.task);
      row.remove();
      if (r.ok) {
        const t = await watchTask(r.data, statusEl);
        if (t.state === 'failed') showErrors(root, t.error);
      }
      busy -= 1;
      refresh();
    });
    refresh();
  }

  // ---------------------------------------------------------------- hosts
  function hostForm() {
    const form = document.getElementById('host-form');
    if (!form) return;
    const result = document.getElementById('host-result');
    const mode = () => form.querySelector('[name="mode"]:checked').value;
    const showMode = () => {
      form.querySelectorAll('[data-mode]').forEach((el) => { el.hidden = el.dataset.mode !== mode(); });
    };
    form.querySelectorAll('[name="mode"]').forEach((r) => r.addEventListener('change', () => {
      clearErrors(form);
      showMode();
    }));
    showMode();
    // where a failed deploy's error belongs, by its code
    const deployField = { unreachable: 'ssh.address', ssh_auth_failed: 'ssh.password',
      host_key_mismatch: 'ssh.host_key_fingerprint', invalid: 'ssh.private_key' };
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearErrors(form);
      result.hidden = true;
      const v = (n) => form.querySelector('[name="' + n + '"]').value.trim();
      const body = { name: v('name') || null, cluster: v('cluster') || null };
      const deploying = mode() === 'ssh';
      if (deploying) {
        const port = v('ssh_port');
        body.ssh = { address: v('ssh_address'), port: port === '' ? 22 : Number(port), user: v('ssh_user') || 'root',
          password: form.querySelector('[name="ssh_password"]').value || null,
          private_key: form.querySelector('[name="ssh_private_key"]').value || null,
          host_key_fingerprint: v('ssh_host_key_fingerprint') || null,
          trust_on_first_use: form.querySelector('[name="ssh_trust_on_first_use"]').checked };
        body.options = { allow_tcg: form.querySelector('[name="allow_tcg"]').checked };
      } else {
        body.url = v('url');
        body.token = v('token') || null;
      }
      const reserved = v('reserved_memory_mib');
      body.reserved_memory_mib = reserved === '' ? null : Number(reserved);
      const submit = form.querySelector('button[type="submit"]');
      submit.disabled = true;
      try {
        const r = await api('POST', '/hosts', body);
        if (!r.ok) {
          showErrors(form, r.data);
          return;
        }
        const t = await watchTask(r.data, form.querySelector('[data-task-status]'));
        if (t.state !== 'succeeded') {
          const err = Object.assign({}, t.error || {});
          if (!err.field && deploying) err.field = deployField[err.code] || null;
          if (!err.field && !deploying) err.field = err.code === 'unreachable' ? 'url' : (err.code === 'agent_refused' ? 'token' : null);
          if (Array.isArray(err.failed_items) && err.failed_items.length) {
            err.message += ' — ' + err.failed_items.map((i) => i.name + ': ' + i.detail).join('; ');
          }
          showErrors(form, err);
          return;
        }
        const h = await api('GET', '/hosts/' + encodeURIComponent(t.result.host_id));
        if (!h.ok) {
          showErrors(form, h.data);
          return;
        }
        const host = h.data;
        const check = (host.info && host.info.hardware_check) || { ok: false, items: [] };
        const summary = result.querySelector('[data-result-summary]');
        summary.replaceChildren('Host ', cell('strong', host.name), ' (' + (host.hypervisor || '?') +
          (host.emulated ? ', emulated' : '') + ') is ', cell('span', label(host.state), 'state state-' + host.state),
          check.ok ? ': the hardware check passed.' : ': the hardware check failed. ' + (host.state_reason || ''));
        const list = result.querySelector('[data-result-checks]');
        list.replaceChildren(...(check.items || []).map((i) => {
          const li = cell('li', null, i.ok ? 'ok' : 'bad');
          li.append(cell('span', i.ok ? '✓' : '✗', 'mark'), ' ', cell('strong', i.name), ' ' + (i.ok ? '' : '(failed) ') + i.detail);
          return li;
        }));
        const link = result.querySelector('[data-result-link]');
        link.href = prefix + '/hosts/' + host.id;
        result.hidden = false;
        result.querySelector('h2').focus();
        form.reset();
        showMode();
      } finally {
        submit.disabled = false;
      }
    });
  }

  function hostPage() {
    const buttons = Array.from(document.querySelectorAll('[data-host-action]'));
    if (!buttons.length) return;
    const root = document.getElementById('main');
    const statusEl = root.querySelector('[data-task-status]');
    const hostId = buttons[0].dataset.host;
    const sync = (state) => {
      buttons.forEach((b) => { if (b.dataset.hostAction === 'maintenance') b.disabled = state === 'maintenance'; });
    };
    document.addEventListener('corral:host', (e) => { if (e.detail.id === hostId) sync(e.detail.state); });
    for (const b of buttons) {
      b.addEventListener('click', async () => {
        clearErrors(root);
        b.disabled = true;
        try {
          const r = await api('POST', '/hosts/' + encodeURIComponent(hostId) + '/' + b.dataset.hostAction);
          if (!r.ok) {
            showErrors(root, r.data);
            return;
          }
          if (r.data && r.data.kind) {
            const t = await watchTask(r.data, statusEl);
            if (t.state === 'failed') showErrors(root, t.error);
          } else if (r.data && r.data.state) {
            onHost(r.data);
          }
        } finally {
          b.disabled = false;
          const badge = document.querySelector('[data-host-state="' + CSS.escape(hostId) + '"]');
          if (badge) sync(badge.textContent.trim());
        }
      });
    }
  }

  // ---------------------------------------------------------------- serial console
  function serialPage() {
    const pre = document.getElementById('serial-log');
    if (!pre) return;
    const follow = document.getElementById('serial-follow');
    const err = document.getElementById('serial-error');
    const path = pre.dataset.url.replace(prefix + '/api', '');
    pre.scrollTop = pre.scrollHeight;
    async function poll() {
      if (follow.checked && document.visibilityState === 'visible') {
        const r = await api('GET', path);
        if (r.ok) {
          const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
          if (pre.textContent !== r.data.log) {
            pre.textContent = r.data.log;
            if (atEnd) pre.scrollTop = pre.scrollHeight;
          }
          err.hidden = true;
        } else {
          err.textContent = (r.data && r.data.message) || 'the console cannot be read';
          err.hidden = false;
        }
      }
      setTimeout(poll, 2000);
    }
    setTimeout(poll, 2000);
  }

  // ---------------------------------------------------------------- dashboard counts
  function dashboard() {
    const head = document.getElementById('dashboard');
    if (!head) return;
    let timer = null;
    const reload = async () => {
      timer = null;
      try {
        const resp = await fetch(head.dataset.summaryUrl, { credentials: 'same-origin' });
        if (!resp.ok) return;
        const counts = await resp.json();
        for (const [key, n] of Object.entries(counts)) setText('[data-count="' + CSS.escape(key) + '"]', String(n));
      } catch (err) { /* the next change retries */ }
    };
    const later = () => { if (!timer) timer = setTimeout(reload, 1500); };
    document.addEventListener('corral:vm', later);
    document.addEventListener('corral:host', later);
  }

  document.addEventListener('DOMContentLoaded', () => {
    live();
    dashboard();
    vmPage();
    hostForm();
    hostPage();
    serialPage();
  });
  window.corral = { api, showErrors, clearErrors, watchTask };
})();
