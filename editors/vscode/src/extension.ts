// The VS Code client of codellama-lsp. The server decides (completions, code actions, edits,
// chat answers); this extension starts it, shows what it says, and asks the user what only
// an editor can ask (an edit instruction, a chat message).
import * as path from 'node:path';
import * as vscode from 'vscode';
import {
  CloseAction,
  DidChangeConfigurationNotification,
  ErrorAction,
  ExecuteCommandRequest,
  LanguageClient,
  ResponseError,
  RevealOutputChannelOn,
  State,
  type CloseHandlerResult,
  type ErrorHandlerResult,
  type LanguageClientOptions,
  type ServerOptions,
} from 'vscode-languageclient/node';
import { ChatView, type ChatArgs, type ChatContext } from './chat';
import { PROMPT_SCHEME, PromptDocuments, type PromptInfo } from './prompt';
import { pipeServerStderr, pipeServerStdout } from './serverLog';
import { findServer } from './serverPath';
import {
  SERVER_KEYS,
  inlineEnabled,
  removedKeys,
  serverPathSetting,
  serverSettings,
  setInlineEnabled,
  type ServerSettings,
} from './settings';
import { StatusItem, isServerStatus } from './status';

/** The server's workspace commands (it advertises them; languageclient registers them). */
const GENERATE_DOCSTRING = 'codellama.generateDocstring';
const EDIT_SELECTION = 'codellama.editSelection';
const CHAT = 'codellama.chat';

/** Automatic restarts after crashes: at most this many within the window, then stay stopped. */
const MAX_RESTARTS = 4;
const RESTART_WINDOW_MS = 3 * 60 * 1000;

const INSTALL_HINT =
  'Install it with `cargo install --path .` in the codellama-lsp repository, or set codellama.serverPath.';

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * languageclient pops up a notification of its own ("couldn't create connection to server",
 * the bare error text) for every failed start, including each automatic restart: a crash loop
 * would stack five of them. Those go to the log only; the extension shows one message with
 * actions instead (serverClosed, reportStartFailure).
 */
/** "app.py:3" or "app.py:3-7" (1-based; a selection ending at a line's start stops before it). */
function rangeLabel(name: string, start: { line: number }, end: { line: number; character: number }): string {
  const last = end.character === 0 && end.line > start.line ? end.line - 1 : end.line;
  return last === start.line ? `${name}:${start.line + 1}` : `${name}:${start.line + 1}-${last + 1}`;
}

class CodellamaClient extends LanguageClient {
  override error(message: string, data?: unknown, showNotification: boolean | 'force' = true): void {
    super.error(message, data, showNotification === 'force' ? false : showNotification);
  }
}

class Extension implements vscode.Disposable {
  private client: LanguageClient | undefined;
  /** The server settings the running server got (initializationOptions + changes). */
  private sent: ServerSettings = {};
  private restarts: number[] = [];
  /** The last editor on a real document (a focused webview or output leaves activeTextEditor unset). */
  private lastEditor: vscode.TextEditor | undefined;
  /** Serializes start/stop/restart. */
  private lifecycle: Promise<void> = Promise.resolve();
  private readonly output: vscode.LogOutputChannel;
  private readonly status: StatusItem;
  private readonly chat: ChatView;
  private readonly prompts = new PromptDocuments();

  constructor(private readonly context: vscode.ExtensionContext) {
    this.output = vscode.window.createOutputChannel('Codellama', { log: true });
    this.status = new StatusItem(() => this.lastEditor?.document.languageId);
    this.chat = new ChatView(context.workspaceState, context.extensionUri, (args, token) => this.runChat(args, token), () =>
      this.selectionContext(),
    );
    this.lastEditor = this.usable(vscode.window.activeTextEditor);
    const register = (id: string, run: (...args: unknown[]) => unknown) =>
      vscode.commands.registerCommand(id, async (...args: unknown[]) => {
        try {
          await run(...args);
        } catch (error) {
          this.output.error(`${id}: ${errorText(error)}`);
          void vscode.window.showErrorMessage(`Codellama: ${errorText(error)}`);
        }
      });
    context.subscriptions.push(
      this.output,
      this.status,
      this.chat,
      this.prompts,
      vscode.workspace.registerTextDocumentContentProvider(PROMPT_SCHEME, this.prompts),
      register('codellama.restartServer', () => this.restart(true)),
      register('codellama.showLog', () => this.output.show(true)),
      register('codellama.generateDocstringAtCursor', () => this.generateDocstring()),
      register('codellama.editSelectionWithInstruction', () => this.editSelection()),
      register('codellama.openChat', () => this.chat.open()),
      register('codellama.showPrompt', () => this.showPrompt()),
      register('codellama.toggleLanguage', () => this.pickLanguageToggle()),
      register('codellama.statusClicked', () => this.statusClicked()),
      vscode.window.onDidChangeActiveTextEditor((editor) => {
        this.lastEditor = this.usable(editor) ?? this.lastEditor;
        this.status.refresh();
        this.warmup(this.usable(editor));
      }),
      vscode.workspace.onDidChangeConfiguration((event) => this.configurationChanged(event)),
    );
  }

  /**
   * Tells the server where the cursor is when an editor gets the focus, so it can prefill that
   * prompt before the first keystroke. A notification: nothing waits for it.
   */
  /**
   * The server finished a suggestion whose first words are shown: if the editor still shows
   * that version with the cursor there, ask again (the server answers from its cache).
   */
  private suggestionReady(client: LanguageClient, params: unknown): void {
    if (params === null || typeof params !== 'object') return;
    const { textDocument, position } = params as {
      textDocument?: { uri?: unknown; version?: unknown };
      position?: { line?: unknown; character?: unknown };
    };
    const editor = vscode.window.activeTextEditor;
    if (!editor || typeof textDocument?.uri !== 'string') return;
    const converter = client.code2ProtocolConverter;
    const cursor = converter.asPosition(editor.selection.active);
    const same =
      converter.asUri(editor.document.uri) === textDocument.uri &&
      editor.document.version === textDocument.version &&
      editor.selection.isEmpty &&
      cursor.line === position?.line &&
      cursor.character === position?.character;
    if (same) void vscode.commands.executeCommand('editor.action.inlineSuggest.trigger');
  }

  private warmup(editor: vscode.TextEditor | undefined): void {
    const client = editor && this.client?.isRunning() ? this.client : undefined;
    if (!editor || !client || !inlineEnabled(editor.document.languageId)) return;
    const c2p = client.code2ProtocolConverter;
    void client
      .sendNotification('codellama/warmup', {
        textDocument: c2p.asTextDocumentIdentifier(editor.document),
        position: c2p.asPosition(editor.selection.active),
      })
      .catch(() => undefined);
  }

  private usable(editor: vscode.TextEditor | undefined): vscode.TextEditor | undefined {
    const scheme = editor?.document.uri.scheme;
    return scheme === 'file' || scheme === 'untitled' ? editor : undefined;
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  start(): Promise<void> {
    return this.serialized(() => this.doStart());
  }

  /** Stops the server if it runs and starts it again with the current settings. */
  restart(byUser: boolean): Promise<void> {
    return this.serialized(async () => {
      if (byUser) this.restarts = [];
      await this.doStop();
      await this.doStart();
    });
  }

  async stop(): Promise<void> {
    await this.serialized(() => this.doStop());
  }

  private serialized(step: () => Promise<void>): Promise<void> {
    const next = this.lifecycle.then(step, step);
    this.lifecycle = next.catch(() => undefined);
    return next;
  }

  private async doStart(): Promise<void> {
    const found = findServer(serverPathSetting());
    if ('problem' in found) {
      this.output.error(found.problem);
      this.status.set({ kind: 'missing', message: found.problem });
      void this.explainMissing(found.problem);
      return;
    }
    this.status.set({ kind: 'starting' });
    this.output.info(`starting ${found.path}`);
    const serverOptions: ServerOptions = { command: found.path, args: [], options: { env: process.env } };
    const clientOptions: LanguageClientOptions = {
      // Any text the user edits; not output channels, git views or our prompt documents.
      documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
      outputChannel: this.output,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      stdioOptions: { stderr: pipeServerStderr, stdout: pipeServerStdout },
      // A function, so that restarts after a crash send the settings of that moment.
      initializationOptions: () => {
        this.sent = serverSettings();
        return this.sent;
      },
      initializationFailedHandler: (error) => {
        this.output.error(`initialize failed: ${errorText(error)}`);
        return false; // no retry; reportStartFailure tells the user
      },
      errorHandler: {
        error: (_error, _message, count): ErrorHandlerResult => ({
          // A few unreadable messages are survivable; a stream of them means the pipe is broken.
          action: (count ?? 0) <= 3 ? ErrorAction.Continue : ErrorAction.Shutdown,
          handled: true,
        }),
        closed: (): CloseHandlerResult => this.serverClosed(),
      },
      middleware: {
        provideInlineCompletionItems: (document, position, context, token, next) =>
          inlineEnabled(document.languageId) ? next(document, position, context, token) : null,
        // The server offers the same suggestion as a completion item, for editors without ghost
        // text. Here it would show twice, run the model twice, and the two requests would
        // supersede each other on the server: never ask.
        provideCompletionItem: () => null,
        executeCommand: (command, args, next) => this.executeCommand(command, args, next),
      },
    };
    const client = new CodellamaClient('codellama', 'Codellama', serverOptions, clientOptions);
    this.client = client;
    // Tells the server that the status item shows "ready", so it needs no pop-up on each start.
    client.registerFeature({
      fillClientCapabilities: (capabilities) => {
        const experimental: Record<string, unknown> =
          typeof capabilities.experimental === 'object' && capabilities.experimental !== null
            ? { ...(capabilities.experimental as Record<string, unknown>) }
            : {};
        experimental.codellamaStatus = true;
        // We ask again on codellama/suggestionReady, so typing may be answered with a
        // suggestion's first words and the whole of it shown when ready.
        experimental.codellamaSuggestionRefresh = true;
        capabilities.experimental = experimental;
      },
      initialize: () => undefined,
      getState: () => ({ kind: 'static' }),
      clear: () => undefined,
    });
    client.onNotification('codellama/status', (status: unknown) => {
      if (isServerStatus(status)) this.status.set({ kind: 'server', status });
    });
    client.onNotification('codellama/chatStream', (params: unknown) => {
      if (params !== null && typeof params === 'object') this.chat.onStream(params);
    });
    client.onNotification('codellama/suggestionReady', (params: unknown) => {
      this.suggestionReady(client, params);
    });
    client.onDidChangeState(({ newState }) => {
      if (newState === State.Running) void this.requestStatus(client);
    });
    try {
      await client.start();
      // Settings changed while it started went nowhere: catch up.
      void this.pushSettings();
      this.warmup(this.usable(vscode.window.activeTextEditor));
    } catch (error) {
      this.output.error(`codellama-lsp did not start: ${errorText(error)}`);
      this.reportStartFailure(client, `codellama-lsp did not start: ${errorText(error)}`);
    }
  }

  /**
   * One message for a failed start. If the process exited, serverClosed is restarting it (and
   * reports when it gives up), so wait until that settles before saying anything.
   */
  private reportStartFailure(client: LanguageClient, message: string): void {
    setTimeout(() => {
      const state = this.status.current.kind;
      if (this.client !== client || client.isRunning() || state === 'stopped' || state === 'server') return;
      if (client.state === State.Starting) return; // an automatic restart is under way
      this.status.set({ kind: 'stopped', message });
      void this.offerRestart(message);
    }, 2000);
  }

  private async doStop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (!client) return;
    try {
      await client.dispose(3000);
    } catch (error) {
      // A client that never started cannot stop cleanly; nothing is left to clean up.
      this.output.debug(`stopping the client: ${errorText(error)}`);
    }
  }

  /** The connection closed without us asking: restart a few times, then stay stopped. */
  private serverClosed(): CloseHandlerResult {
    const now = Date.now();
    this.restarts = this.restarts.filter((at) => now - at < RESTART_WINDOW_MS);
    if (this.restarts.length < MAX_RESTARTS) {
      this.restarts.push(now);
      this.status.set({ kind: 'starting' });
      const message = `codellama-lsp exited; restarting it (${this.restarts.length} of ${MAX_RESTARTS} in 3 minutes)`;
      this.output.warn(message);
      return { action: CloseAction.Restart, message, handled: true };
    }
    const message = `codellama-lsp stopped: it exited ${MAX_RESTARTS + 1} times in 3 minutes. The log says why.`;
    this.status.set({ kind: 'stopped', message });
    void this.offerRestart(message);
    return { action: CloseAction.DoNotRestart, message, handled: true };
  }

  private async offerRestart(message: string): Promise<void> {
    const choice = await vscode.window.showErrorMessage(message, 'Restart', 'Show log');
    if (choice === 'Restart') await this.restart(true);
    else if (choice === 'Show log') this.output.show(true);
  }

  private async explainMissing(problem: string): Promise<void> {
    const choice = await vscode.window.showErrorMessage(`${problem} ${INSTALL_HINT}`, 'Open Settings', 'Installation guide');
    if (choice === 'Open Settings') {
      await vscode.commands.executeCommand('workbench.action.openSettings', 'codellama.serverPath');
    } else if (choice === 'Installation guide') {
      const readme = vscode.Uri.joinPath(this.context.extensionUri, 'README.md');
      try {
        await vscode.commands.executeCommand('markdown.showPreview', readme);
      } catch {
        await vscode.window.showTextDocument(readme);
      }
    }
  }

  private async requestStatus(client: LanguageClient): Promise<void> {
    try {
      const status: unknown = await client.sendRequest('codellama/status', {});
      // A notification may have overtaken the answer; both come from the same server, either is fine.
      if (isServerStatus(status)) this.status.set({ kind: 'server', status });
    } catch (error) {
      // An older server without codellama/status: show it as running.
      this.output.warn(`codellama/status: ${errorText(error)}`);
      if (this.status.current.kind === 'starting') {
        const model = typeof this.sent.model === 'string' ? this.sent.model : null;
        this.status.set({ kind: 'server', status: { state: 'ready', model, message: 'codellama-lsp is running (it does not report its status)' } });
      }
    }
  }

  /** The running client, or undefined after telling the user why there is none. */
  private runningClient(): LanguageClient | undefined {
    if (this.client?.isRunning()) return this.client;
    const state = this.status.current;
    if (state.kind === 'missing') void this.explainMissing(state.message);
    else void this.offerRestart('The Codellama server is not running.');
    return undefined;
  }

  // ---- settings -----------------------------------------------------------------------------

  private configurationChanged(event: vscode.ConfigurationChangeEvent): void {
    if (!event.affectsConfiguration('codellama')) return;
    if (event.affectsConfiguration('codellama.enable')) this.status.refresh();
    if (event.affectsConfiguration('codellama.serverPath')) {
      void this.restart(true);
      return;
    }
    if (SERVER_KEYS.some((key) => event.affectsConfiguration(`codellama.${key}`))) void this.pushSettings();
  }

  private async pushSettings(): Promise<void> {
    const client = this.client;
    // Not running: the next start sends them as initializationOptions.
    if (!client?.isRunning()) return;
    const next = serverSettings();
    const removed = removedKeys(this.sent, next);
    if (removed.length > 0) {
      // The server layers each change over the previous ones, so an unset key would keep its
      // old value; a fresh start is the only way back to its default.
      this.output.info(`unset ${removed.join(', ')}: restarting codellama-lsp so its defaults apply`);
      await this.restart(false);
      return;
    }
    if (JSON.stringify(next) === JSON.stringify(this.sent)) return;
    this.output.info(`settings changed: ${JSON.stringify(next)}`);
    await client.sendNotification(DidChangeConfigurationNotification.type, { settings: { codellama: next } });
    this.sent = next;
  }

  // ---- commands -----------------------------------------------------------------------------

  /**
   * Middleware for every server command, whether a light-bulb action or our own command ran it:
   * asks for an edit's instruction, routes chat into the chat view, and turns failures into
   * a message instead of VS Code's "running the contributed command failed".
   */
  private async executeCommand(
    command: string,
    args: unknown[],
    next: (command: string, args: unknown[]) => vscode.ProviderResult<unknown>,
  ): Promise<unknown> {
    try {
      const first: unknown = args[0];
      if (command === EDIT_SELECTION && first !== null && typeof first === 'object' && !('instruction' in first)) {
        const instruction = await vscode.window.showInputBox({
          title: 'Codellama: edit the selection',
          prompt: 'What should change in the selected code?',
          placeHolder: 'e.g. handle the empty list; use pathlib; add logging',
          ignoreFocusOut: true,
        });
        if (instruction === undefined || instruction.trim() === '') return undefined;
        args = [{ ...first, instruction: instruction.trim() }, ...args.slice(1)];
      } else if (command === CHAT && first !== null && typeof first === 'object') {
        // "Explain this code": show the streamed answer in the chat view, not in a notification.
        const chat = first as { sessionId?: unknown; message?: unknown; uri?: unknown; range?: unknown };
        if (typeof chat.message === 'string') {
          const context = this.protocolContext(chat.uri, chat.range);
          await this.chat.ask(chat.message, context, typeof chat.sessionId === 'string' ? chat.sessionId : undefined);
          return undefined;
        }
      }
      return await next(command, args);
    } catch (error) {
      this.reportCommandError(command, error);
      return undefined;
    }
  }

  private reportCommandError(command: string, error: unknown): void {
    const text = errorText(error);
    this.output.warn(`${command}: ${text}`);
    if (error instanceof ResponseError) {
      // -32800: cancelled by the user. Messages the server made start with "codellama-lsp:"
      // and it has already shown them (window/showMessage).
      if (error.code === -32800 || text.startsWith('codellama-lsp:')) return;
    }
    void vscode.window.showErrorMessage(`Codellama: ${command} failed: ${text}`, 'Show log').then((choice) => {
      if (choice) this.output.show(true);
    });
  }

  private activeEditor(): vscode.TextEditor | undefined {
    const editor = this.usable(vscode.window.activeTextEditor) ?? this.lastEditor;
    if (!editor) void vscode.window.showInformationMessage('Codellama: open a file first.');
    return editor;
  }

  private async generateDocstring(): Promise<void> {
    const editor = this.activeEditor();
    const client = editor && this.runningClient();
    if (!editor || !client) return;
    const c2p = client.code2ProtocolConverter;
    await vscode.commands.executeCommand(GENERATE_DOCSTRING, {
      uri: c2p.asUri(editor.document.uri),
      position: c2p.asPosition(editor.selection.active),
    });
  }

  private async editSelection(): Promise<void> {
    const editor = this.activeEditor();
    if (!editor) return;
    if (editor.selection.isEmpty) {
      void vscode.window.showInformationMessage('Codellama: select the code to edit first.');
      return;
    }
    const client = this.runningClient();
    if (!client) return;
    const c2p = client.code2ProtocolConverter;
    // Goes through executeCommand's middleware, which asks for the instruction.
    await vscode.commands.executeCommand(EDIT_SELECTION, {
      uri: c2p.asUri(editor.document.uri),
      range: c2p.asRange(editor.selection),
    });
  }

  private async showPrompt(): Promise<void> {
    const editor = this.activeEditor();
    const client = editor && this.runningClient();
    if (!editor || !client) return;
    const c2p = client.code2ProtocolConverter;
    const position = editor.selection.active;
    let info: PromptInfo;
    try {
      info = await client.sendRequest<PromptInfo>('codellama/prompt', {
        textDocument: c2p.asTextDocumentIdentifier(editor.document),
        position: c2p.asPosition(position),
      });
    } catch (error) {
      this.output.warn(`codellama/prompt: ${errorText(error)}`);
      void vscode.window.showErrorMessage(`Codellama: could not build the prompt: ${errorText(error)}`);
      return;
    }
    await this.prompts.show(editor.document, position, info);
  }

  private async runChat(args: ChatArgs, token: vscode.CancellationToken): Promise<string | undefined> {
    const client = this.runningClient();
    if (!client) throw new Error('The Codellama server is not running.');
    const result: unknown = await client.sendRequest(ExecuteCommandRequest.type, { command: CHAT, arguments: [args] }, token);
    const answer = result !== null && typeof result === 'object' ? (result as { answer?: unknown }).answer : undefined;
    return typeof answer === 'string' ? answer : undefined;
  }

  /** The selection in the last editor, in protocol form, for a chat message. */
  private selectionContext(): ChatContext | undefined {
    const editor = this.lastEditor;
    const client = this.client;
    if (!editor || editor.selection.isEmpty || !client || editor.document.isClosed) return undefined;
    const c2p = client.code2ProtocolConverter;
    const { start, end } = editor.selection;
    return {
      uri: c2p.asUri(editor.document.uri),
      range: c2p.asRange(editor.selection),
      label: rangeLabel(path.basename(editor.document.uri.path), start, end),
    };
  }

  /** A chat context from a server command's protocol uri and range. */
  private protocolContext(uri: unknown, range: unknown): ChatContext | undefined {
    if (typeof uri !== 'string' || range === null || typeof range !== 'object') return undefined;
    const r = range as ChatContext['range'];
    if (typeof r.start?.line !== 'number' || typeof r.end?.line !== 'number') return undefined;
    const name = uri.slice(uri.lastIndexOf('/') + 1);
    return { uri, range: r, label: rangeLabel(decodeURIComponent(name), r.start, r.end) };
  }

  // ---- status bar ---------------------------------------------------------------------------

  private async statusClicked(): Promise<void> {
    const state = this.status.current;
    if (state.kind === 'missing') return this.explainMissing(state.message);
    if (state.kind === 'stopped') return this.restart(true);
    if (state.kind === 'server' && state.status.state === 'error') {
      this.output.show(true);
      return;
    }
    return this.pickLanguageToggle();
  }

  /** A quick pick: inline completions on/off for the current language or all, and the usual actions. */
  private async pickLanguageToggle(): Promise<void> {
    type Item = vscode.QuickPickItem & { run: () => unknown };
    const items: Item[] = [];
    const language = this.lastEditor?.document.languageId;
    if (language !== undefined) {
      const on = inlineEnabled(language);
      items.push({
        label: on ? `$(circle-slash) Disable inline completions for ${language}` : `$(check) Enable inline completions for ${language}`,
        run: () => setInlineEnabled(language, !on),
      });
    }
    const allOn = inlineEnabled('*');
    items.push(
      {
        label: allOn ? '$(circle-slash) Disable inline completions for all languages' : '$(check) Enable inline completions for all languages',
        description: 'codellama.enable["*"]',
        run: () => setInlineEnabled('*', !allOn),
      },
      { label: '', kind: vscode.QuickPickItemKind.Separator, run: () => undefined },
      { label: '$(comment-discussion) Chat', run: () => this.chat.open() },
      { label: '$(output) Show log', run: () => this.output.show(true) },
      { label: '$(debug-restart) Restart server', run: () => this.restart(true) },
      {
        label: '$(gear) Settings',
        run: () => vscode.commands.executeCommand('workbench.action.openSettings', '@ext:codellama-lsp.codellama-lsp'),
      },
    );
    const state = this.status.current;
    const picked = await vscode.window.showQuickPick(items, {
      title: 'Codellama',
      placeHolder: state.kind === 'server' ? state.status.message || undefined : undefined,
    });
    if (picked) await picked.run();
  }

  dispose(): void {
    // The client is stopped by deactivate (which VS Code awaits).
  }
}

let extension: Extension | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  extension = new Extension(context);
  context.subscriptions.push(extension);
  await extension.start();
}

export async function deactivate(): Promise<void> {
  await extension?.stop();
  extension = undefined;
}
