// Corral admin portal: templates (issue 12). Uses window.corral from portal.js (api, showErrors, clearErrors,
// watchTask).
// - a template's page: delete, after a confirmation; a refusal (clones still read its base volumes) shows next
//   to the button, in the API's words
// - a VM's page: "Make template" (the VM must be stopped): name + description, posted as a task whose progress
//   shows under the form, then a link to the new template
'use strict';

(() => {
  const prefix = document.body.dataset.prefix || '/portal';

  function deleteButton() {
    const root = document.getElementById('template-root');
    const b = root && root.querySelector('[data-delete-template]');
    if (!b) return;
    const C = window.corral;
    b.addEventListener('click', async () => {
      C.clearErrors(root);
      if (!window.confirm('Delete template ' + b.dataset.name + '? Its base volumes are deleted from their hosts.')) return;
      b.disabled = true;
      try {
        const r = await C.api('DELETE', '/templates/' + encodeURIComponent(b.dataset.deleteTemplate));
        const t = r.ok ? await C.watchTask(r.data, root.querySelector('[data-task-status]')) : null;
        if (t && t.state === 'succeeded') {
          window.location.href = prefix + '/templates';
          return;
        }
        C.showErrors(root, Object.assign({}, t ? t.error : r.data, { field: 'template' }));
      } finally {
        b.disabled = false;
      }
    });
  }

  function makeForm() {
    const form = document.getElementById('template-form');
    const vm = document.getElementById('vm');
    if (!form || !vm) return;
    const C = window.corral;
    const box = document.getElementById('template-make');
    const submit = form.querySelector('button[type="submit"]');
    const done = form.querySelector('[data-template-done]');
    // offered while the VM is stopped: the API refuses otherwise, and says why
    const sync = () => { box.hidden = vm.dataset.state !== 'down'; };
    document.addEventListener('corral:vm', (e) => { if (e.detail.id === vm.dataset.vm) sync(); });
    sync();
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      C.clearErrors(form);
      done.hidden = true;
      const val = (p) => form.querySelector('[data-path="' + p + '"]').value.trim();
      const body = { name: val('name'), vm: vm.dataset.vm };
      if (val('description')) body.description = val('description');
      submit.disabled = true;
      try {
        const r = await C.api('POST', '/templates', body);
        if (!r.ok) {
          C.showErrors(form, r.data);
          return;
        }
        const t = await C.watchTask(r.data, form.querySelector('[data-task-status]'));
        if (t.state !== 'succeeded') {
          C.showErrors(form, t.error);
          return;
        }
        const link = done.querySelector('a');
        link.href = prefix + '/templates/' + t.result.id;
        link.textContent = 'template ' + t.result.name;
        done.hidden = false;
        form.reset();
      } finally {
        submit.disabled = false;
      }
    });
  }

  document.addEventListener('DOMContentLoaded', () => {
    deleteButton();
    makeForm();
  });
})();
