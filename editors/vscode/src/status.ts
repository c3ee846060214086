// The status bar item: what the server says about its model (`codellama/status`), plus what
// only the client knows (binary missing, stopped, inline completions off for this language).
import * as path from 'node:path';
import * as vscode from 'vscode';
import { inlineEnabled } from './settings';

/** The server's `codellama/status` (request result and notification). */
export interface ServerStatus {
  state: 'starting' | 'downloading' | 'loading' | 'ready' | 'error';
  model?: string | null;
  message?: string;
  percent?: number | null;
  infill?: boolean | null;
  version?: string;
  encoding?: string;
}

export type ClientState =
  | { kind: 'starting' }
  | { kind: 'server'; status: ServerStatus }
  | { kind: 'missing'; message: string }
  | { kind: 'stopped'; message: string };

export function isServerStatus(value: unknown): value is ServerStatus {
  return (
    value !== null &&
    typeof value === 'object' &&
    typeof (value as { state?: unknown }).state === 'string'
  );
}

/** "codellama-7b.Q4_K_M.gguf" or "/x/y/tiny.gguf" or "owner/repo:file.gguf" → a short name. */
export function shortModelName(model: string | null | undefined): string {
  if (!model) return 'model';
  let name = model.includes(':') && !model.includes(path.sep) ? model.slice(model.lastIndexOf(':') + 1) : model;
  name = path.basename(name).replace(/\.gguf$/i, '');
  return name.length > 32 ? name.slice(0, 31) + '…' : name;
}

export class StatusItem implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;
  private state: ClientState = { kind: 'starting' };

  /** @param language the language of the editor the user works in (also while a webview has focus) */
  constructor(private readonly language: () => string | undefined) {
    this.item = vscode.window.createStatusBarItem('codellama.status', vscode.StatusBarAlignment.Right, 100);
    this.item.name = 'Codellama';
    this.item.command = 'codellama.statusClicked';
    this.render();
    this.item.show();
  }

  get current(): ClientState {
    return this.state;
  }

  set(state: ClientState): void {
    this.state = state;
    this.render();
  }

  /** Re-render for another editor or changed `codellama.enable`. */
  refresh(): void {
    this.render();
  }

  private render(): void {
    const item = this.item;
    const state = this.state;
    item.backgroundColor = undefined;
    switch (state.kind) {
      case 'starting':
        item.text = '$(sync~spin) Codellama';
        item.tooltip = 'Codellama: starting codellama-lsp…';
        return;
      case 'missing':
        item.text = '$(warning) Codellama: not installed';
        item.tooltip = `${state.message}\nClick for how to install it.`;
        item.backgroundColor = new vscode.ThemeColor('statusBarItem.warningBackground');
        return;
      case 'stopped':
        item.text = '$(debug-disconnect) Codellama stopped';
        item.tooltip = `${state.message}\nClick to restart the server.`;
        item.backgroundColor = new vscode.ThemeColor('statusBarItem.errorBackground');
        return;
      case 'server':
        this.renderServer(state.status);
    }
  }

  private renderServer(status: ServerStatus): void {
    const item = this.item;
    const model = shortModelName(status.model);
    const about = [status.message, status.version && `codellama-lsp ${status.version}`]
      .filter((line) => line)
      .join('\n');
    switch (status.state) {
      case 'starting':
        item.text = '$(sync~spin) Codellama';
        item.tooltip = about || 'Codellama: the server is starting';
        return;
      case 'downloading': {
        const percent = typeof status.percent === 'number' ? ` ${Math.floor(status.percent)}%` : '';
        item.text = `$(cloud-download) Codellama: downloading${percent}`;
        item.tooltip = about || `Downloading ${model}`;
        return;
      }
      case 'loading':
        item.text = `$(sync~spin) Codellama: loading ${model}`;
        item.tooltip = about || `Loading ${model}`;
        return;
      case 'error':
        item.text = '$(error) Codellama: error';
        item.tooltip = `${about || 'The server reported an error.'}\nClick to show the log.`;
        item.backgroundColor = new vscode.ThemeColor('statusBarItem.errorBackground');
        return;
      case 'ready': {
        const language = this.language();
        const off = language !== undefined && !inlineEnabled(language);
        if (status.infill === false) {
          item.text = `$(warning) Codellama ready: ${model} (no inline)`;
          item.tooltip = `${about}\nThis model has no infilling tokens: no inline completions; docstrings, edits and chat work.`;
        } else if (off) {
          item.text = `$(circle-slash) Codellama ready: ${model} (off for ${language})`;
          item.tooltip = `${about}\nInline completions are off for ${language}. Click to turn them on.`;
        } else {
          item.text = `$(sparkle) Codellama ready: ${model}`;
          item.tooltip = `${about}\nClick to turn inline completions on or off for a language.`;
        }
        return;
      }
      default:
        item.text = `$(question) Codellama: ${String(status.state)}`;
        item.tooltip = about;
    }
  }

  dispose(): void {
    this.item.dispose();
  }
}
