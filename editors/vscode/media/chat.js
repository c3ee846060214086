// The chat view's page: renders the transcript the extension posts, sends what is typed.
(function () {
  'use strict';
  const vscode = acquireVsCodeApi();
  const log = document.getElementById('log');
  const input = document.getElementById('input');
  const send = document.getElementById('send');
  const stop = document.getElementById('stop');
  const clear = document.getElementById('clear');
  const context = document.getElementById('context');
  let busy = false;

  function node(entry) {
    const div = document.createElement('div');
    div.className = 'entry ' + entry.role;
    if (entry.context) {
      const about = document.createElement('div');
      about.className = 'about';
      about.textContent = 'with ' + entry.context;
      div.appendChild(about);
    }
    const text = document.createElement('div');
    text.className = 'text';
    text.textContent = entry.text || (entry.role === 'assistant' ? '…' : '');
    div.appendChild(text);
    return div;
  }

  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  }

  function setBusy(value) {
    busy = value;
    send.disabled = busy;
    stop.disabled = !busy;
  }

  function submit() {
    const text = input.value.trim();
    if (!text || busy) return;
    vscode.postMessage({ type: 'send', text: text });
    input.value = '';
  }

  window.addEventListener('message', function (event) {
    const message = event.data;
    const follow = atBottom();
    if (message.type === 'history') {
      log.textContent = '';
      message.entries.forEach(function (entry) { log.appendChild(node(entry)); });
      setBusy(message.busy);
    } else if (message.type === 'update') {
      const fresh = node(message.entry);
      const old = log.children[message.index];
      if (old) log.replaceChild(fresh, old); else log.appendChild(fresh);
    } else if (message.type === 'busy') {
      setBusy(message.busy);
    } else if (message.type === 'context') {
      context.textContent = message.label;
    }
    if (follow) log.scrollTop = log.scrollHeight;
  });

  send.addEventListener('click', submit);
  stop.addEventListener('click', function () { vscode.postMessage({ type: 'stop' }); });
  clear.addEventListener('click', function () { vscode.postMessage({ type: 'clear' }); });
  input.addEventListener('keydown', function (event) {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  vscode.postMessage({ type: 'ready' });
  input.focus();
})();
