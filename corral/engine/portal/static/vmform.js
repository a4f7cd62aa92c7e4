// Corral admin portal: the New VM form (/portal/vms/new). Uses window.corral from portal.js (api, showErrors,
// clearErrors). Disk rows are a new volume of a size (in a storage domain), an existing volume, a clone of a
// disk image (thin or full, optionally grown), or a file on the host; the CD-ROM takes an ISO of the image
// library (its path) or a file on the host. A template, when picked, fills in memory, vCPUs and guest type and
// gives the VM clones of its disks: disk rows then add to its disks, NIC rows replace its NICs, and the
// settings it keeps are hidden. The spec is posted to the API as JSON; each refusal shows next to the field it
// names (disks.0.size_bytes, disks.1.volume...).
'use strict';

(() => {
  const prefix = document.body.dataset.prefix || '/portal';

  function vmForm() {
    const form = document.getElementById('vm-form');
    if (!form) return;
    const C = window.corral;
    let seq = 0;
    const rowsOf = (kind) => form.querySelector('[data-rows="' + kind + '"]');
    const group = { disk: 'disks', nic: 'nics' };
    const title = { disk: 'Disk', nic: 'Interface' };
    const clusterSel = form.querySelector('[data-path="cluster"]');
    const val = (p) => {
      const el = form.querySelector('[data-path="' + p + '"]');
      return el ? el.value.trim() : '';
    };
    const tplSel = form.querySelector('[data-template-picker]');
    const template = () => (tplSel && tplSel.value ? tplSel.selectedOptions[0] : null);
    // the template's disks as a create body names them: its base volumes cloned, the rest as they are
    const templateDisks = (opt) => {
      const bases = JSON.parse(opt.dataset.bases);
      return JSON.parse(opt.dataset.disks).map((d) => {
        if (!bases.includes(d.volume)) return d;
        const c = Object.assign({}, d, { clone: val('clone') });
        delete c.format;  // a clone's format is the engine's choice (qcow2 for thin)
        return c;
      });
    };

    function renumber(kind) {
      // rows added to a template's disks come after them, as the API counts them
      const offset = kind === 'disk' && template() ? templateDisks(template()).length : 0;
      Array.from(rowsOf(kind).children).forEach((row, n) => {
        const i = n + offset;
        row.dataset.path = group[kind] + '.' + i;
        row.querySelector('[data-row-title]').textContent = title[kind] + ' ' + (i + 1);
        row.querySelectorAll('[data-key]').forEach((el) => { el.dataset.path = group[kind] + '.' + i + '.' + el.dataset.key; });
        row.querySelectorAll('[data-remove-row]').forEach((b) => b.setAttribute('aria-label', 'Remove ' + title[kind].toLowerCase() + ' ' + (i + 1)));
        row.querySelectorAll('[data-unit]').forEach((u) => u.setAttribute('aria-label', title[kind] + ' ' + (i + 1) + ' size unit'));
      });
    }

    // a disk row shows the inputs of its kind only; storage domains of the chosen cluster only
    function syncDisk(row) {
      const kindSel = row.querySelector('[data-key="kind"]');
      if (!kindSel) return;
      row.querySelectorAll('[data-kind]').forEach((el) => {
        const on = el.dataset.kind.split(' ').includes(kindSel.value);
        el.hidden = !on;
        el.querySelectorAll('input, select').forEach((i) => { i.disabled = !on; });
      });
      const image = row.querySelector('[data-key="image"]').selectedOptions[0];
      row.querySelector('[data-image-size]').textContent = image
        ? 'Optional: at least the image\'s ' + image.dataset.size + '; left empty, the disk has that size.' : '';
      const storage = row.querySelector('[data-key="storage"]');
      if (storage && clusterSel) {
        storage.querySelectorAll('option').forEach((o) => {
          o.hidden = !!o.dataset.cluster && o.dataset.cluster !== clusterSel.value;
          o.disabled = o.hidden;
        });
        if (storage.selectedOptions[0] && storage.selectedOptions[0].disabled) {
          const first = Array.from(storage.options).find((o) => !o.disabled);
          storage.value = first ? first.value : '';
        }
      }
    }

    function addRow(kind) {
      const tpl = document.getElementById('row-' + kind);
      const row = tpl.content.firstElementChild.cloneNode(true);
      seq += 1;
      row.querySelectorAll('[data-key]').forEach((el) => {
        el.id = kind + '-' + seq + '-' + el.dataset.key;
        const lab = row.querySelector('label[data-for="' + el.dataset.key + '"]');
        if (lab) lab.htmlFor = el.id;
      });
      row.querySelector('[data-remove-row]').addEventListener('click', () => { row.remove(); renumber(kind); });
      const kindSel = row.querySelector('[data-key="kind"]');
      if (kindSel) {
        if (kindSel.selectedOptions[0] && kindSel.selectedOptions[0].disabled) {
          kindSel.value = Array.from(kindSel.options).find((o) => !o.disabled).value;
        }
        const size = row.querySelector('[data-key="size_bytes"]');
        kindSel.addEventListener('change', () => {
          if (kindSel.value === 'image' && size.value === '10') size.value = '';  // an image's size by default
          if (kindSel.value === 'size' && size.value === '') size.value = '10';
          syncDisk(row);
        });
        row.querySelector('[data-key="image"]').addEventListener('change', () => syncDisk(row));
      }
      rowsOf(kind).append(row);
      renumber(kind);
      syncDisk(row);
      return row;
    }

    form.querySelectorAll('[data-add-row]').forEach((b) => b.addEventListener('click', () => {
      const row = addRow(b.dataset.addRow);
      row.querySelector('input, select').focus();
    }));
    // a template picked: its values filled in, its disks listed, the settings it keeps hidden
    function syncTemplate() {
      const opt = template();
      form.querySelectorAll('[data-no-template]').forEach((el) => { el.hidden = !!opt; });
      form.querySelectorAll('[data-template-only], [data-template-disks], [data-template-nics]').forEach((el) => { el.hidden = !opt; });
      form.querySelectorAll('[data-template-bases]').forEach((el) => { el.hidden = !opt || el.dataset.templateBases !== opt.value; });
      rowsOf('disk').replaceChildren();
      rowsOf('nic').replaceChildren();
      if (!opt) {
        addRow('disk');
        addRow('nic');
        return;
      }
      for (const [path, key] of [['memory_mib', 'memory'], ['vcpus', 'vcpus'], ['guest_type', 'guest']]) {
        if (opt.dataset[key]) form.querySelector('[data-path="' + path + '"]').value = opt.dataset[key];
      }
      form.querySelector('[data-template-nics]').textContent = 'With no interface added here the VM gets the ' +
        'template\'s interfaces (' + opt.dataset.nics + ', with new MAC addresses); those added here replace them.';
    }
    const syncCluster = () => {
      if (!tplSel || !clusterSel) return;
      tplSel.querySelectorAll('option[data-cluster]').forEach((o) => { o.hidden = o.disabled = o.dataset.cluster !== clusterSel.value; });
      if (template() && template().disabled) {
        tplSel.value = '';
        syncTemplate();
      }
    };
    syncTemplate();
    syncCluster();
    if (tplSel) tplSel.addEventListener('change', syncTemplate);
    if (clusterSel) {
      clusterSel.addEventListener('change', () => {
        Array.from(rowsOf('disk').children).forEach(syncDisk);
        syncCluster();
      });
    }

    const cdToggle = form.querySelector('[data-cdrom-toggle]');
    const cdIso = form.querySelector('[data-cdrom-iso]');
    const cdPath = form.querySelector('[data-cdrom-path]');
    const cdPathField = form.querySelector('[data-cdrom-path-field]');
    const syncCd = () => {
      cdIso.disabled = !cdToggle.checked;
      cdPathField.hidden = cdIso.value !== 'path';
      cdPath.disabled = !cdToggle.checked || cdIso.value !== 'path';
    };
    cdToggle.addEventListener('change', syncCd);
    cdIso.addEventListener('change', syncCd);
    syncCd();
    const gfx = form.querySelector('[data-graphics]');
    const gfxDeps = ['graphics.listen', 'graphics.password'].map((p) => form.querySelector('[data-path="' + p + '"]'));
    gfx.addEventListener('change', () => gfxDeps.forEach((el) => { el.disabled = !gfx.value; }));

    const num = (p) => {
      const v = val(p);
      return v === '' ? null : Number(v);
    };
    const checked = (p) => form.querySelector('[data-path="' + p + '"]').checked;

    function disk(row) {
      const get = (k) => { const el = row.querySelector('[data-key="' + k + '"]'); return el ? el.value.trim() : ''; };
      const kind = get('kind') || 'source';
      const d = { bus: get('bus') };
      const n = Number(get('size_bytes'));
      // a size the browser cannot read is sent as given, for the API to refuse by name
      const size = Number.isFinite(n) && get('size_bytes') !== '' ? Math.round(n * Number(get('size_unit'))) : get('size_bytes');
      if (kind === 'size') {
        d.size_bytes = size;
        d.format = get('format');
        if (get('storage')) d.storage = get('storage');
      } else if (kind === 'image') {
        d.image = get('image');
        d.clone = get('clone');
        if (get('size_bytes') !== '') d.size_bytes = size;
      } else if (kind === 'volume') {
        d.volume = get('volume');
        const opt = row.querySelector('[data-key="volume"]').selectedOptions[0];
        if (opt && opt.dataset.storage) d.storage = opt.dataset.storage;
      } else {
        d.source = get('source');
        d.format = get('format');
      }
      return d;
    }

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      C.clearErrors(form);
      const spec = {
        name: val('name'), memory_mib: num('memory_mib'), vcpus: num('vcpus'), guest_type: val('guest_type'),
        boot: val('boot').split(','),
      };
      if (val('description')) spec.description = val('description');
      const opt = template();
      const own = opt ? templateDisks(opt) : [];
      spec.disks = own.concat(Array.from(rowsOf('disk').children).map(disk));
      const bad = spec.disks.findIndex((d, i) => i >= own.length && 'size_bytes' in d &&
        !(typeof d.size_bytes === 'number' && d.size_bytes >= 1));
      if (bad >= 0) {  // said here in words, before the API's own refusal
        C.showErrors(form, { field: 'disks.' + bad + '.size_bytes', message: 'Give a size greater than zero.' });
        return;
      }
      cdIso.removeAttribute('data-path');
      cdPath.removeAttribute('data-path');
      if (cdToggle.checked) {
        const source = cdIso.value === 'path' ? (cdPath.value.trim() || null) : (cdIso.value || null);
        spec.disks.push({ device: 'cdrom', source, format: 'raw' });
        const at = 'disks.' + (spec.disks.length - 1);
        (cdIso.value === 'path' ? cdPath : cdIso).dataset.path = at + '.source';
        cdToggle.dataset.path = at;
      }
      spec.nics = Array.from(rowsOf('nic').children).map((row) => {
        const get = (k) => row.querySelector('[data-key="' + k + '"]').value.trim();
        return { source_type: get('source_type'), source: get('source'), model: get('model') };
      });
      if (gfx.value) {
        spec.graphics = { type: gfx.value, listen: val('graphics.listen') };
        if (val('graphics.password')) spec.graphics.password = form.querySelector('[data-path="graphics.password"]').value;
      } else {
        spec.graphics = null;
      }
      spec.consoles = val('consoles') ? [{ kind: val('consoles') }] : [];
      spec.guest_agent = checked('guest_agent') ? {} : null;
      spec.balloon = checked('balloon') ? {} : null;
      for (const k of ['kernel', 'initrd', 'cmdline']) if (val(k)) spec[k] = val(k);
      const ciUser = val('cloud_init.user');
      if (ciUser) {  // first-boot data: the API checks each field and names it (cloud_init.…)
        const keys = form.querySelector('[data-path="cloud_init.ssh_authorized_keys"]').value.split('\n')
          .map((k) => k.trim()).filter(Boolean);
        const net = { mode: val('cloud_init.network.mode') };
        if (net.mode === 'static') {
          net.address = val('cloud_init.network.address') || null;
          net.gateway = val('cloud_init.network.gateway') || null;
          net.dns = val('cloud_init.network.dns').split(',').map((d) => d.trim()).filter(Boolean);
        }
        spec.cloud_init = { user: ciUser, ssh_authorized_keys: keys, hostname: val('cloud_init.hostname') || null,
          network: net };
      }
      if (opt) {  // the template's values stay where the form has no override
        Object.assign(spec, { template: opt.value, clone: val('clone') });
        if (spec.disks.length === own.length) delete spec.disks;
        if (!spec.nics.length) delete spec.nics;
        for (const k of ['boot', 'graphics', 'consoles', 'guest_agent', 'balloon', 'kernel', 'initrd', 'cmdline']) delete spec[k];
      }
      const cluster = val('cluster');
      const submit = form.querySelector('button[type="submit"]');
      submit.disabled = true;
      try {
        const r = await C.api('POST', '/vms' + (cluster ? '?cluster=' + encodeURIComponent(cluster) : ''), spec);
        if (r.ok) window.location.href = prefix + '/vms/' + r.data.id;
        else C.showErrors(form, r.data);
      } finally {
        submit.disabled = false;
      }
    });
  }

  document.addEventListener('DOMContentLoaded', vmForm);
})();
