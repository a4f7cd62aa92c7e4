// Corral admin portal: a VM's snapshots (issue 12), on its page. Uses window.corral from portal.js (api,
// showErrors, clearErrors, watchTask). The host that runs (or last ran) the VM owns its snapshots, so the list is
// read from the API when the page opens and after each take, revert or delete (each a task whose progress shows
// in the section). Refusals are shown in words: a live snapshot where the hypervisor has none names the host's
// hypervisor and says to stop the VM first, with the host's own reason.
'use strict';

(() => {
  const STATES = { running: 'running', shutoff: 'stopped', paused: 'paused', crashed: 'crashed', pmsuspended: 'suspended' };
  const MECHANISMS = {
    libvirt: 'the hypervisor\'s own snapshots (libvirt)',
    'offline-qcow2': 'qcow2 snapshots of the disks, taken while the VM is stopped',
  };

  const when = (iso) => (iso ? String(iso).replace('T', ' ').replace(/\.\d+/, '').replace(/(\+00:00|Z)$/, ' UTC') : 'unknown time');
  const stateAt = (s) => (STATES[s.vm_state] || String(s.vm_state || 'unknown').replace(/_/g, ' ')) +
    (s.memory ? ', with its memory' : ', disks only');

  function el(tag, text, attrs) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }

  function snapshots() {
    const root = document.getElementById('snapshots');
    if (!root) return;
    const C = window.corral;
    const vmId = root.dataset.vm;
    const vmName = root.dataset.vmName;
    const hv = root.dataset.hypervisor || '';
    const body = root.querySelector('tbody');
    const note = root.querySelector('[data-snapshot-where]');
    const statusEl = root.querySelector('[data-task-status]');
    const form = document.getElementById('snapshot-form');
    const base = '/vms/' + encodeURIComponent(vmId) + '/snapshots';
    let busy = false;

    // an API or task error as the section shows it: in words, next to the name input when it names it
    function explain(err) {
      const e = Object.assign({ message: 'the operation failed' }, err || {});
      if (e.feature === 'snapshot.live' || (e.code === 'unsupported' && e.field === 'state')) {
        return { field: null, message: 'Live snapshots are not possible on this ' + (hv ? hv + ' ' : '') +
          'host: stop the VM first. The host says: ' + e.message };
      }
      return { field: e.field === 'name' ? 'name' : null, message: e.message };
    }

    function setBusy(on) {
      busy = on;
      root.querySelectorAll('button').forEach((b) => { b.disabled = on; });
    }

    function empty(text) {
      const tr = el('tr', null, { class: 'empty' });
      tr.append(el('td', text, { colspan: '5' }));
      body.replaceChildren(tr);
    }

    async function load() {
      if (!root.dataset.host) {  // no host has its disks: nothing to ask
        empty('No snapshots: the VM has not run on any host yet. Start it once to take one.');
        return;
      }
      const r = await C.api('GET', base);
      if (!r.ok) {
        note.textContent = '';
        empty((r.data && r.data.message) || 'The snapshots cannot be read now.');
        return;
      }
      note.textContent = 'On host ' + r.data.host + ': ' + (MECHANISMS[r.data.mechanism] || r.data.mechanism) + '.';
      if (!r.data.items.length) {
        empty('No snapshots yet.');
        return;
      }
      body.replaceChildren(...r.data.items.map(row));
    }

    function row(s) {
      const tr = el('tr', null, { 'data-snapshot': s.name });
      const name = el('th', s.name, { scope: 'row' });
      if (s.current) name.append(' ', el('span', 'current', { class: 'tag', title: 'the snapshot the VM was last taken at or reverted to' }));
      const actions = el('td', null, { class: 'nowrap' });
      const revert = el('button', 'Revert', { type: 'button', 'data-snapshot-action': 'revert' });
      revert.append(el('span', ' to ' + s.name, { class: 'sr-only' }));
      const del = el('button', 'Delete', { type: 'button', class: 'danger', 'data-snapshot-action': 'delete' });
      del.append(el('span', ' snapshot ' + s.name, { class: 'sr-only' }));
      revert.addEventListener('click', () => act('revert', s));
      del.addEventListener('click', () => act('delete', s));
      revert.disabled = del.disabled = busy;
      actions.append(revert, ' ', del);
      tr.append(name, el('td', s.description || '—'), el('td', when(s.created_at), { class: 'nowrap' }), el('td', stateAt(s)), actions);
      return tr;
    }

    async function run(method, path, payload, errorRoot) {
      C.clearErrors(root);
      setBusy(true);
      try {
        const r = await C.api(method, path, payload);
        const t = r.ok ? await C.watchTask(r.data, statusEl) : null;
        if (!t || t.state !== 'succeeded') {
          C.showErrors(errorRoot, explain(t ? t.error : r.data));
          return false;
        }
        return true;
      } finally {
        setBusy(false);
        await load();
      }
    }

    function act(action, s) {
      const question = action === 'revert'
        ? 'Revert VM ' + vmName + ' to snapshot ' + s.name + '? The VM goes back to how it was at ' + when(s.created_at) +
          ' (' + stateAt(s) + (s.memory ? ': it comes back running from that moment' : '') + '). What changed since is lost.'
        : 'Delete snapshot ' + s.name + ' of VM ' + vmName + '? The VM stays as it is now; it can no longer go back to ' + s.name + '.';
      if (!window.confirm(question)) return;
      const path = base + '/' + encodeURIComponent(s.name) + (action === 'revert' ? '/revert' : '');
      run(action === 'revert' ? 'POST' : 'DELETE', path, undefined, root);
    }

    if (form) {
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        C.clearErrors(form);
        const val = (p) => form.querySelector('[data-path="' + p + '"]').value.trim();
        const payload = { name: val('name') };
        if (val('description')) payload.description = val('description');
        if (await run('POST', base, payload, form)) form.reset();
      });
    }
    load();
  }

  document.addEventListener('DOMContentLoaded', snapshots);
})();
