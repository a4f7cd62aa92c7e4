// The serial terminal: xterm.js (npm @xterm/xterm, served by the engine from where scripts/install put it) on
// the engine's console WebSocket, which the agent of the VM's host relays to the VM's serial console. Without
// xterm.js, a plain <pre> that shows what comes and sends the keys typed.
const box = document.getElementById('terminal');
const status = document.getElementById('term-status');
const again = document.getElementById('term-reconnect');
const prefix = document.body.dataset.prefix;

function setStatus(text, state) {
  status.textContent = text;
  status.dataset.state = state;
  box.dataset.state = state;
}

// the key typed as the bytes a terminal sends (plain terminal only; xterm.js does this itself)
function keyBytes(e) {
  const named = { Enter: '\r', Backspace: '\x7f', Tab: '\t', Escape: '\x1b', ArrowUp: '\x1b[A', ArrowDown: '\x1b[B',
    ArrowRight: '\x1b[C', ArrowLeft: '\x1b[D' };
  if (e.ctrlKey && e.key.length === 1 && /[a-z@\[\]\\^_]/i.test(e.key)) return String.fromCharCode(e.key.toUpperCase().charCodeAt(0) & 31);
  if (named[e.key]) return named[e.key];
  return e.key.length === 1 && !e.metaKey ? e.key : null;
}

async function plainTerminal() {
  const pre = document.createElement('pre');
  pre.className = 'console-log';
  pre.id = 'terminal-text';
  box.appendChild(pre);
  const decoder = new TextDecoder();
  return {
    write: (bytes) => { pre.textContent += decoder.decode(bytes, { stream: true }).replace(/\r/g, ''); pre.scrollTop = pre.scrollHeight; },
    onData: (send) => box.addEventListener('keydown', (e) => {
      const data = keyBytes(e);
      if (data !== null) { e.preventDefault(); send(data); }
    }),
    focus: () => box.focus(),
  };
}

async function xtermTerminal() {
  const { Terminal } = await import(prefix + '/xterm/lib/xterm.mjs');
  const term = new Terminal({ cursorBlink: true, scrollback: 5000, convertEol: false });
  term.open(box);
  return { write: (bytes) => term.write(bytes), onData: (send) => term.onData(send), focus: () => term.focus() };
}

if (box && box.dataset.wsPath) {
  let term;
  try {
    term = box.dataset.xterm ? await xtermTerminal() : await plainTerminal();
  } catch (err) {
    console.warn('xterm.js did not load; plain terminal', err);
    term = await plainTerminal();
  }
  const url = (window.location.protocol === 'https:' ? 'wss://' : 'ws://') + window.location.host + box.dataset.wsPath;
  const ws = new WebSocket(url, ['binary']);
  ws.binaryType = 'arraybuffer';
  const encoder = new TextEncoder();
  ws.addEventListener('open', () => { setStatus('Connected', 'connected'); term.focus(); });
  ws.addEventListener('message', (e) => term.write(new Uint8Array(e.data)));
  ws.addEventListener('close', (e) => setStatus(
    e.code === 1000 || e.code === 1005 ? 'Disconnected.' : `Closed (${e.code}): ${e.reason || 'the connection was lost or refused'}; reload the page for a new ticket.`,
    'disconnected'));
  term.onData((data) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data)); });
  again.addEventListener('click', () => window.location.reload());
  window.corralTerminal = { ws };
}
