// "Codellama: Show prompt": the prompt the model sees at the cursor, as a read-only document.
import * as path from 'node:path';
import * as vscode from 'vscode';

export const PROMPT_SCHEME = 'codellama-prompt';

/** The server's `codellama/prompt` answer. */
export interface PromptInfo {
  text?: unknown;
  tokens?: unknown;
  contextSources?: unknown;
}

export class PromptDocuments implements vscode.TextDocumentContentProvider, vscode.Disposable {
  private readonly texts = new Map<string, string>();
  private readonly changed = new vscode.EventEmitter<vscode.Uri>();
  readonly onDidChange = this.changed.event;

  provideTextDocumentContent(uri: vscode.Uri): string {
    return this.texts.get(uri.toString()) ?? '(this prompt is gone: run "Codellama: Show prompt" again)';
  }

  /** Shows `info` for `document` at `position` beside the editor. */
  async show(document: vscode.TextDocument, position: vscode.Position, info: PromptInfo): Promise<void> {
    const name = path.basename(document.uri.path) || 'untitled';
    const where = `${name}:${position.line + 1}:${position.character + 1}`;
    const sources = Array.isArray(info.contextSources) ? info.contextSources.map(String) : [];
    const header = [
      `# Why this suggestion? The prompt codellama-lsp gives the model at ${where}`,
      `# ${typeof info.tokens === 'number' ? info.tokens : '?'} tokens; context from other files: ${sources.length ? sources.join(', ') : 'none'}`,
      '# ---------------------------------------------------------------------------',
      '',
    ].join('\n');
    const uri = vscode.Uri.from({ scheme: PROMPT_SCHEME, path: `/${name}.prompt.txt` });
    this.texts.set(uri.toString(), header + (typeof info.text === 'string' ? info.text : ''));
    this.changed.fire(uri);
    const shown = await vscode.workspace.openTextDocument(uri);
    await vscode.window.showTextDocument(shown, { viewColumn: vscode.ViewColumn.Beside, preview: true, preserveFocus: true });
  }

  dispose(): void {
    this.changed.dispose();
  }
}
