// Corral admin portal: the users page (issue 14). Uses window.corral from portal.js (api, showErrors,
// clearErrors). Adds a user, changes a role, disables or enables an account, all through /portal/api/users.
'use strict';

(() => {
  function start() {
    const root = document.getElementById('users-root');
    if (!root || !window.corral) return;
    const C = window.corral;
    const banner = root.querySelector('[data-action-error]');
    const fail = (box, data) => {
      C.showErrors(box, data);
      if (banner && data && data.message) { banner.textContent = data.message; banner.hidden = false; }
    };
    const patch = async (el, name, body) => {
      const box = el.closest('tr') || root;
      C.clearErrors(box);
      if (banner) banner.hidden = true;
      el.disabled = true;
      const r = await C.api('PATCH', '/users/' + encodeURIComponent(name), body);
      el.disabled = false;
      if (r.ok) window.location.reload();
      else fail(box, r.data);
    };
    root.querySelectorAll('[data-user-role]').forEach((sel) => sel.addEventListener('change', () =>
      patch(sel, sel.dataset.userRole, { role: sel.value })));
    root.querySelectorAll('[data-user-disable]').forEach((b) => b.addEventListener('click', () => {
      const disabling = b.dataset.disabled === 'true';
      if (disabling && !window.confirm('Disable ' + b.dataset.userDisable + '? Their sessions and tokens stop working.')) return;
      patch(b, b.dataset.userDisable, { disabled: disabling });
    }));
    const form = document.getElementById('user-form');
    if (form) form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      C.clearErrors(form);
      const body = { username: form.username.value, role: form.role.value, password: form.password.value };
      const r = await C.api('POST', '/users', body);
      if (r.ok) window.location.reload();
      else fail(form, r.data);
    });
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
