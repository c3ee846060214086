// Finding the codellama-lsp binary: the setting, else PATH, else ~/.cargo/bin (where
// `cargo install` puts it; VS Code started from a desktop menu often lacks it on PATH).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { expandHome } from './settings';

export type Found = { path: string } | { problem: string };

const BINARY = process.platform === 'win32' ? 'codellama-lsp.exe' : 'codellama-lsp';

function isExecutableFile(file: string): boolean {
  try {
    if (!fs.statSync(file).isFile()) return false;
    if (process.platform !== 'win32') fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export function findServer(setting: string | undefined): Found {
  if (setting !== undefined) {
    let file = expandHome(setting);
    if (!path.isAbsolute(file)) {
      // A relative path is taken from the first workspace folder (e.g. "target/release/codellama-lsp").
      const folder = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
      if (folder !== undefined) file = path.join(folder, file);
    }
    if (isExecutableFile(file)) return { path: file };
    const why = fs.existsSync(file) ? 'is not an executable file' : 'does not exist';
    return { problem: `codellama.serverPath is "${setting}", but ${file} ${why}.` };
  }
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter((dir) => dir !== '');
  dirs.push(path.join(os.homedir(), '.cargo', 'bin'));
  for (const dir of dirs) {
    const file = path.join(dir, BINARY);
    if (isExecutableFile(file)) return { path: file };
  }
  return { problem: 'codellama-lsp was not found on PATH or in ~/.cargo/bin.' };
}
