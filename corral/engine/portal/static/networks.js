// Corral admin portal: the networks page (issue 18). Uses window.corral from portal.js (api, showErrors,
// clearErrors). Adds a network and deletes one, through /portal/api/networks; refusals show by their field.
'use strict';

(() => {
  function start() {
    const root = document.getElementById('networks-root');
    if (!root || !window.corral) return;
    const C = window.corral;
    const banner = root.querySelector('[data-action-error]');
    const fail = (box, data) => {
      C.showErrors(box, data);
      if (banner && data && data.message) { banner.textContent = data.message; banner.hidden = false; }
    };
    root.querySelectorAll('[data-delete-network]').forEach((b) => b.addEventListener('click', async () => {
      if (!window.confirm('Delete network ' + b.dataset.name + '? The hosts keep their bridges.')) return;
      const box = b.closest('section') || root;
      C.clearErrors(box);
      if (banner) banner.hidden = true;
      b.disabled = true;
      const r = await C.api('DELETE', '/networks/' + encodeURIComponent(b.dataset.deleteNetwork));
      b.disabled = false;
      if (r.ok) window.location.reload();
      else fail(box, r.data);
    }));
    const form = document.getElementById('network-form');
    if (form) form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      C.clearErrors(form);
      const body = {
        name: form.name.value, cluster: form.cluster.value, required: form.required.checked,
        roles: Array.from(form.querySelectorAll('input[name="roles"]:checked')).map((i) => i.value),
      };
      if (form.vlan.value) body.vlan = Number(form.vlan.value);
      if (form.mtu.value) body.mtu = Number(form.mtu.value);
      if (form.description.value) body.description = form.description.value;
      const r = await C.api('POST', '/networks', body);
      if (r.ok) window.location.reload();
      else fail(form, r.data);
    });
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
