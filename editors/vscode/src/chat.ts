// "Codellama: Chat": a webview that shows one conversation per workspace. The server keeps the
// conversation's memory (by sessionId) and streams each answer with `codellama/chatStream`;
// this view only shows it and keeps the transcript in workspaceState so it survives a reload.
import * as crypto from 'node:crypto';
import * as vscode from 'vscode';

/** The selection sent with a message, already in protocol form. */
export interface ChatContext {
  uri: string;
  range: { start: { line: number; character: number }; end: { line: number; character: number } };
  /** For people: "app.py:3-7". */
  label: string;
}

export interface ChatArgs {
  sessionId: string;
  message: string;
  uri?: string;
  range?: ChatContext['range'];
  show: false;
}

/** Sends `codellama.chat` to the server; resolves to its answer. */
export type ChatRunner = (args: ChatArgs, token: vscode.CancellationToken) => Promise<string | undefined>;

interface Entry {
  role: 'user' | 'assistant' | 'error';
  text: string;
  context?: string;
}

interface Transcript {
  sessionId: string;
  entries: Entry[];
}

interface StreamParams {
  sessionId?: unknown;
  text?: unknown;
  done?: unknown;
}

const STATE_KEY = 'codellama.chat';
const MAX_ENTRIES = 200;

function newSessionId(): string {
  return `vscode-${crypto.randomBytes(6).toString('hex')}`;
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class ChatView implements vscode.Disposable {
  private panel: vscode.WebviewPanel | undefined;
  private transcript: Transcript;
  private pending: { sessionId: string; index: number; cancel: vscode.CancellationTokenSource } | undefined;
  private readonly disposables: vscode.Disposable[] = [];

  constructor(
    private readonly memento: vscode.Memento,
    private readonly extensionUri: vscode.Uri,
    private readonly run: ChatRunner,
    /** The selection to send along, if any. */
    private readonly selection: () => ChatContext | undefined,
  ) {
    const saved = memento.get<Transcript>(STATE_KEY);
    this.transcript =
      saved && typeof saved.sessionId === 'string' && Array.isArray(saved.entries)
        ? saved
        : { sessionId: newSessionId(), entries: [] };
    this.disposables.push(
      vscode.window.onDidChangeTextEditorSelection(() => this.postContext()),
      vscode.window.onDidChangeActiveTextEditor(() => this.postContext()),
    );
  }

  /** Opens (or reveals) the view with the transcript so far. */
  open(): void {
    if (this.panel) {
      this.panel.reveal(undefined, false);
      return;
    }
    const media = vscode.Uri.joinPath(this.extensionUri, 'media');
    const panel = vscode.window.createWebviewPanel(
      'codellama.chat',
      'Codellama Chat',
      { viewColumn: vscode.ViewColumn.Beside, preserveFocus: false },
      { enableScripts: true, localResourceRoots: [media] },
    );
    this.panel = panel;
    panel.webview.html = this.html(panel.webview, media);
    panel.webview.onDidReceiveMessage((message: unknown) => this.onMessage(message), undefined, this.disposables);
    panel.onDidDispose(() => {
      this.panel = undefined;
    });
  }

  /** Asks the server, showing the question and the streamed answer in the view. */
  async ask(message: string, context: ChatContext | undefined, sessionId = this.transcript.sessionId): Promise<void> {
    this.open();
    if (this.pending) {
      void vscode.window.showInformationMessage('Codellama is still answering: wait, or press Stop.');
      return;
    }
    this.push({ role: 'user', text: message, context: context?.label });
    const index = this.push({ role: 'assistant', text: '' });
    const cancel = new vscode.CancellationTokenSource();
    this.pending = { sessionId, index, cancel };
    this.post({ type: 'busy', busy: true });
    const args: ChatArgs = { sessionId, message, show: false };
    if (context) {
      args.uri = context.uri;
      args.range = context.range;
    }
    try {
      const answer = await this.run(args, cancel.token);
      const entry = this.transcript.entries[index];
      if (typeof answer === 'string') entry.text = answer;
      if (entry.text === '') entry.text = '(no answer)';
      this.update(index);
    } catch (error) {
      const entry = this.transcript.entries[index];
      if (cancel.token.isCancellationRequested) {
        entry.text = `${entry.text}${entry.text ? '\n' : ''}(stopped)`;
      } else {
        entry.role = 'error';
        entry.text = `${entry.text}${entry.text ? '\n' : ''}${errorText(error)}`;
      }
      this.update(index);
    } finally {
      cancel.dispose();
      this.pending = undefined;
      this.post({ type: 'busy', busy: false });
      void this.save();
    }
  }

  /** `codellama/chatStream`: the answer so far, whole. */
  onStream(params: StreamParams): void {
    const pending = this.pending;
    if (!pending || params.sessionId !== pending.sessionId || typeof params.text !== 'string') return;
    this.transcript.entries[pending.index].text = params.text;
    this.update(pending.index);
  }

  private onMessage(message: unknown): void {
    if (message === null || typeof message !== 'object') return;
    const { type, text } = message as { type?: unknown; text?: unknown };
    switch (type) {
      case 'ready':
        this.post({ type: 'history', entries: this.transcript.entries, busy: this.pending !== undefined });
        this.postContext();
        return;
      case 'send':
        if (typeof text === 'string' && text.trim() !== '') void this.ask(text.trim(), this.selection());
        return;
      case 'stop':
        this.pending?.cancel.cancel();
        return;
      case 'clear':
        // A new session id: the server starts a fresh conversation too.
        this.pending?.cancel.cancel();
        this.transcript = { sessionId: newSessionId(), entries: [] };
        void this.save();
        this.post({ type: 'history', entries: [], busy: false });
        return;
    }
  }

  private push(entry: Entry): number {
    this.transcript.entries.push(entry);
    if (this.transcript.entries.length > MAX_ENTRIES) {
      const drop = this.transcript.entries.length - MAX_ENTRIES;
      this.transcript.entries.splice(0, drop);
      if (this.pending) this.pending.index -= drop;
      this.post({ type: 'history', entries: this.transcript.entries, busy: this.pending !== undefined });
    } else {
      this.update(this.transcript.entries.length - 1);
    }
    return this.transcript.entries.length - 1;
  }

  private update(index: number): void {
    this.post({ type: 'update', index, entry: this.transcript.entries[index] });
  }

  private postContext(): void {
    if (!this.panel) return;
    const context = this.selection();
    this.post({ type: 'context', label: context ? `The selection (${context.label}) goes with your message.` : '' });
  }

  private post(message: object): void {
    if (this.panel) void this.panel.webview.postMessage(message);
  }

  private async save(): Promise<void> {
    await this.memento.update(STATE_KEY, this.transcript);
  }

  private html(webview: vscode.Webview, media: vscode.Uri): string {
    const nonce = crypto.randomBytes(16).toString('base64');
    const script = webview.asWebviewUri(vscode.Uri.joinPath(media, 'chat.js'));
    const style = webview.asWebviewUri(vscode.Uri.joinPath(media, 'chat.css'));
    return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src ${webview.cspSource}; script-src 'nonce-${nonce}';">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${style.toString()}">
<title>Codellama Chat</title>
</head>
<body>
<div id="log" role="log" aria-live="polite"></div>
<div id="composer">
  <div id="context"></div>
  <textarea id="input" rows="3" placeholder="Ask Codellama (Enter sends, Shift+Enter is a new line)"></textarea>
  <div id="buttons">
    <button id="send">Send</button>
    <button id="stop" class="secondary" disabled>Stop</button>
    <button id="clear" class="secondary" title="Forget this conversation and start a new one">New chat</button>
  </div>
</div>
<script nonce="${nonce}" src="${script.toString()}"></script>
</body>
</html>`;
  }

  dispose(): void {
    this.pending?.cancel.cancel();
    this.panel?.dispose();
    for (const disposable of this.disposables) disposable.dispose();
  }
}
