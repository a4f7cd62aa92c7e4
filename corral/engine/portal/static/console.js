// The graphical console: noVNC (npm @novnc/novnc, served by the engine from where scripts/install put it)
// connected to the engine's console WebSocket, which the agent of the VM's host relays to the VM's VNC server.
import RFB from '../novnc/core/rfb.js';

const screen = document.getElementById('vnc-screen');
const status = document.getElementById('vnc-status');
const cad = document.getElementById('vnc-cad');
const again = document.getElementById('vnc-reconnect');
const pwForm = document.getElementById('vnc-password');

function setStatus(text, state) {
  status.textContent = text;
  status.dataset.state = state;
  screen.dataset.state = state;
}

if (screen && screen.dataset.wsPath) {
  const url = (window.location.protocol === 'https:' ? 'wss://' : 'ws://') + window.location.host + screen.dataset.wsPath;
  const rfb = new RFB(screen, url);
  rfb.scaleViewport = true;
  rfb.focusOnClick = true;
  rfb.addEventListener('connect', () => {
    setStatus('Connected', 'connected');
    cad.disabled = false;
  });
  rfb.addEventListener('disconnect', (e) => {
    cad.disabled = true;
    setStatus(e.detail.clean ? 'Disconnected.' : 'The connection was lost or refused; reload the page for a new console ticket.',
      'disconnected');
  });
  rfb.addEventListener('credentialsrequired', () => {
    setStatus('The VNC server asks for a password.', 'credentials');
    pwForm.hidden = false;
    pwForm.querySelector('input').focus();
  });
  rfb.addEventListener('securityfailure', (e) => setStatus('Security failure: ' + (e.detail.reason || e.detail.status), 'failed'));
  rfb.addEventListener('desktopname', (e) => {
    screen.setAttribute('aria-label', 'Graphical console: ' + e.detail.name + '; keys typed here go to the VM');
  });
  pwForm.addEventListener('submit', (e) => {
    e.preventDefault();
    rfb.sendCredentials({ password: pwForm.querySelector('input').value });
    pwForm.hidden = true;
  });
  // Tabbing onto the screen hands the keyboard to the VM (noVNC listens on its canvas). From then on every key,
  // Tab included, goes to the VM, as in any VNC client; a click outside the screen takes the keyboard back.
  screen.addEventListener('focus', (e) => {
    if (!screen.contains(e.relatedTarget)) rfb.focus();
  });
  cad.addEventListener('click', () => rfb.sendCtrlAltDel());
  again.addEventListener('click', () => window.location.reload());
  window.corralRfb = rfb;
}
