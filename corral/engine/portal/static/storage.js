// Corral admin portal: the storage pages (issue 12). Uses window.corral from portal.js (api, showErrors,
// clearErrors, watchTask). Adds and deletes storage domains and volumes, deletes images, and uploads a file:
// an XMLHttpRequest PUT of the File itself (the browser streams it and sets Content-Length) to
// /portal/api/images/{name}, with a progress bar, a cancel button (abort: the engine keeps nothing) and, for
// files small enough to read whole, its SHA-256 (the engine refuses the upload if other bytes arrive).
'use strict';

(() => {
  const prefix = document.body.dataset.prefix || '/portal';
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : '';
  const UNITS = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];

  function size(n) {
    let v = n;
    let i = 0;
    while (v >= 1024 && i < UNITS.length - 1) { v /= 1024; i += 1; }
    return i === 0 ? v + ' bytes' : v.toFixed(1).replace(/\.0$/, '') + ' ' + UNITS[i];
  }

  // the element that shows an error: the box naming its field when there is one, else the page's banner
  function showError(box, root, data) {
    const C = window.corral;
    const field = data && data.field;
    const scope = field && box && box.querySelector('[data-path="' + CSS.escape(field) + '"]') ? box : root;
    C.showErrors(scope, data);
  }

  async function runTask(r, root) {
    const C = window.corral;
    if (!r.ok) return r;
    if (!r.data || !r.data.kind) return r;
    const t = await C.watchTask(r.data, root.querySelector('[data-task-status]'));
    return t.state === 'succeeded' ? { ok: true, data: t.result } : { ok: false, data: t.error };
  }

  // ---------------------------------------------------------------- delete buttons
  function deletes() {
    const root = document.getElementById('storage-root');
    if (!root) return;
    const C = window.corral;
    const what = {
      deleteDomain: ['storage domain', (id) => '/storage-domains/' + encodeURIComponent(id),
        'Its pool is undefined on the hosts; files stay on disk.'],
      deleteVolume: ['volume', (id) => '/volumes/' + encodeURIComponent(id), 'Its data is lost.'],
      deleteImage: ['image', (id) => '/images/' + encodeURIComponent(id), 'Its file is deleted from the host.'],
    };
    for (const [key, [noun, path, consequence]] of Object.entries(what)) {
      const attr = 'data-' + key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
      document.querySelectorAll('[' + attr + ']').forEach((b) => b.addEventListener('click', async () => {
        const box = b.closest('section, tr') || root;
        C.clearErrors(box);
        C.clearErrors(root);
        if (!window.confirm('Delete ' + noun + ' ' + b.dataset.name + '? ' + consequence)) return;
        b.disabled = true;
        try {
          const r = await runTask(await C.api('DELETE', path(b.dataset[key])), root);
          if (!r.ok) {
            showError(box, root, r.data);
            return;
          }
          if (key === 'deleteDomain' && root.dataset.domainId) window.location.href = prefix + '/storage';
          else window.location.reload();
        } finally {
          b.disabled = false;
        }
      }));
    }
  }

  // ---------------------------------------------------------------- add a storage domain
  function domainForm() {
    const form = document.getElementById('domain-form');
    if (!form) return;
    const C = window.corral;
    const type = form.querySelector('[data-path="type"]');
    const show = () => form.querySelectorAll('[data-for-types]').forEach((el) => {
      el.hidden = !el.dataset.forTypes.split(' ').includes(type.value);
    });
    type.addEventListener('change', () => { C.clearErrors(form); show(); });
    show();
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      C.clearErrors(form);
      const v = (p) => form.querySelector('[data-path="' + p + '"]').value.trim();
      const body = { name: v('name'), type: type.value, cluster: v('cluster') || null };
      if (type.value !== 'logical') body.path = v('path');
      if (type.value === 'nfs') body.source = { host: v('source.host'), dir: v('source.dir') };
      if (type.value === 'logical') body.source = { vg: v('source.vg') };
      const submit = form.querySelector('button[type="submit"]');
      submit.disabled = true;
      try {
        const r = await C.api('POST', '/storage-domains', body);
        if (!r.ok) {
          C.showErrors(form, r.data);
          return;
        }
        window.location.href = prefix + '/storage/' + r.data.id;
      } finally {
        submit.disabled = false;
      }
    });
  }

  // ---------------------------------------------------------------- size inputs (number + unit)
  function sizeBytes(box) {
    const n = Number(box.querySelector('[data-size-number]').value);
    const unit = Number(box.querySelector('[data-size-unit]').value);
    return Number.isFinite(n) && n > 0 ? Math.round(n * unit) : null;
  }

  function volumeForm() {
    const form = document.getElementById('volume-form');
    if (!form) return;
    const C = window.corral;
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      C.clearErrors(form);
      const v = (p) => { const el = form.querySelector('[data-path="' + p + '"]'); return el ? el.value.trim() : ''; };
      const body = { name: v('name'), domain: form.dataset.domain, format: v('format'),
        size_bytes: sizeBytes(form.querySelector('[data-size]')) };
      if (v('host')) body.host = v('host');
      if (body.size_bytes === null) {
        C.showErrors(form, { field: 'size_bytes', message: 'Give a size greater than zero.' });
        return;
      }
      const submit = form.querySelector('button[type="submit"]');
      submit.disabled = true;
      try {
        const r = await runTask(await C.api('POST', '/volumes', body), form);
        if (r.ok) window.location.reload();
        else C.showErrors(form, r.data);
      } finally {
        submit.disabled = false;
      }
    });
  }

  // ---------------------------------------------------------------- upload
  async function digest(file) {
    const buf = await file.arrayBuffer();
    const hash = await crypto.subtle.digest('SHA-256', buf);
    return Array.from(new Uint8Array(hash), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function uploadForm() {
    const form = document.getElementById('upload-form');
    if (!form) return;
    const C = window.corral;
    const fileIn = document.getElementById('up-file');
    const nameIn = document.getElementById('up-name');
    const storageSel = document.getElementById('up-storage');
    const hostSel = document.getElementById('up-host');
    const hostField = form.querySelector('[data-host-field]');
    const start = form.querySelector('[data-upload-start]');
    const cancel = form.querySelector('[data-upload-cancel]');
    const box = form.querySelector('[data-upload-progress]');
    const bar = document.getElementById('up-progress');
    const status = form.querySelector('[data-upload-status]');
    const shaMax = Number(form.dataset.shaMax || 0);
    let xhr = null;
    let cancelled = false;

    const syncHosts = () => {
      const opt = storageSel.selectedOptions[0];
      const shared = !opt || opt.dataset.shared === 'yes';
      hostField.hidden = shared;
      hostSel.querySelectorAll('option[data-domain]').forEach((o) => {
        o.hidden = o.dataset.domain !== storageSel.value;
        o.disabled = o.hidden;
      });
      if (hostSel.selectedOptions[0] && hostSel.selectedOptions[0].disabled) hostSel.value = '';
    };
    storageSel.addEventListener('change', syncHosts);
    syncHosts();
    fileIn.addEventListener('change', () => {
      const f = fileIn.files[0];
      if (f && !nameIn.value.trim()) nameIn.value = f.name.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^[._-]+/, '').slice(0, 64);
    });

    const busy = (on) => {
      start.disabled = on;
      cancel.hidden = !on;
      fileIn.disabled = on;
    };

    function send(file, url) {
      return new Promise((resolve) => {
        xhr = new XMLHttpRequest();
        xhr.open('PUT', url);
        xhr.setRequestHeader('X-CSRF-Token', csrf);
        xhr.setRequestHeader('Content-Type', 'application/octet-stream');
        xhr.setRequestHeader('Accept', 'application/json');
        xhr.upload.addEventListener('progress', (e) => {
          const total = e.lengthComputable ? e.total : file.size;
          const pct = total ? Math.floor((100 * e.loaded) / total) : 0;
          bar.value = pct;
          status.textContent = 'Uploading: ' + pct + '% (' + size(e.loaded) + ' of ' + size(total) + ')';
        });
        xhr.upload.addEventListener('load', () => {
          bar.value = 100;
          status.textContent = 'Sent; the host is checking the image…';
        });
        const done = (kind) => () => {
          let data = null;
          try { data = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch (err) { data = null; }
          resolve({ kind, status: xhr.status, data });
        };
        xhr.addEventListener('load', done('load'));
        xhr.addEventListener('error', done('error'));
        xhr.addEventListener('abort', done('abort'));
        xhr.send(file);
      });
    }

    cancel.addEventListener('click', () => {
      cancelled = true;
      if (xhr) xhr.abort();
    });

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      C.clearErrors(form);
      const file = fileIn.files[0];
      if (!file) {
        C.showErrors(form, { field: 'Content-Length', message: 'Choose a file to upload.' });
        return;
      }
      if (!file.size) {
        C.showErrors(form, { field: 'Content-Length', message: 'The file is empty.' });
        return;
      }
      const name = nameIn.value.trim();
      if (!name) {
        C.showErrors(form, { field: 'name', message: 'Give the image a name.' });
        return;
      }
      cancelled = false;
      busy(true);
      box.hidden = false;
      bar.value = 0;
      const params = new URLSearchParams({ storage: storageSel.value });
      if (!hostField.hidden && hostSel.value) params.set('host', hostSel.value);
      let note = '';
      try {
        if (file.size <= shaMax && window.crypto && crypto.subtle) {
          status.textContent = 'Computing the SHA-256 of ' + size(file.size) + '…';
          params.set('sha256', await digest(file));
          note = ' SHA-256 checked end to end.';
        } else {
          note = ' SHA-256 not checked (the file is over ' + size(shaMax) + ').';
        }
        if (cancelled) throw new Error('cancelled');
        const r = await send(file, prefix + '/api/images/' + encodeURIComponent(name) + '?' + params);
        if (r.kind === 'abort' || cancelled) {
          status.textContent = 'Upload cancelled: nothing was kept.';
          return;
        }
        if (r.kind === 'error') {
          box.hidden = true;
          C.showErrors(form, { message: 'The upload was interrupted (the connection to the engine failed): nothing was kept.' });
          return;
        }
        if (r.status === 401) {
          window.location.href = prefix + '/login?next=' + encodeURIComponent(location.pathname);
          return;
        }
        if (r.status >= 400) {
          box.hidden = true;
          C.showErrors(form, r.data || { message: 'The engine answered ' + r.status + '.' });
          return;
        }
        const img = r.data;
        status.textContent = 'Uploaded ' + img.name + ': ' + (img.kind === 'iso' ? 'ISO' : 'disk image') + ', ' +
          img.format + ', ' + size(img.size_bytes) + '.' + note;
        form.dataset.uploaded = img.name;
        setTimeout(() => window.location.reload(), 1500);
      } catch (err) {
        if (cancelled) status.textContent = 'Upload cancelled: nothing was kept.';
        else C.showErrors(form, { message: 'The file could not be read: ' + err.message });
      } finally {
        xhr = null;
        busy(false);
      }
    });
  }

  document.addEventListener('DOMContentLoaded', () => {
    deletes();
    domainForm();
    volumeForm();
    uploadForm();
  });
  window.corralSize = { size, sizeBytes };
})();
