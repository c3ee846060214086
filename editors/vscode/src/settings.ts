// What the user configured under `codellama.*`, split into what goes to the server and what
// the extension itself reads.
import * as os from 'node:os';
import * as vscode from 'vscode';

/** The server's settings, exactly: it refuses a settings object with any other key. */
export const SERVER_KEYS = [
  'model',
  'device',
  'kvType',
  'backend',
  'tokenizer',
  'maxTokens',
  'contextTokens',
  'temperature',
  'fimOrder',
  'prefixShare',
  'deadlineMs',
  'firstAnswerMs',
  'workspaceContext',
] as const;

export type ServerKey = (typeof SERVER_KEYS)[number];
export type ServerSettings = Partial<Record<ServerKey, string | number | boolean | object>>;

/** Settings whose value is a file path (`~` is expanded for them). */
const PATH_KEYS: readonly ServerKey[] = ['model', 'tokenizer'];

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration('codellama');
}

/** `~/x` → the home directory's x (the server does not expand `~`). */
export function expandHome(value: string): string {
  return value === '~' || value.startsWith('~/') ? os.homedir() + value.slice(1) : value;
}

/**
 * The server settings the user set. Every contributed default is null, so an unset key is
 * left out and the server's own default applies.
 */
export function serverSettings(): ServerSettings {
  const cfg = config();
  const settings: ServerSettings = {};
  for (const key of SERVER_KEYS) {
    const value = cfg.get<unknown>(key);
    if (typeof value === 'string') {
      const trimmed = value.trim();
      if (trimmed !== '') settings[key] = PATH_KEYS.includes(key) ? expandHome(trimmed) : trimmed;
    } else if (typeof value === 'number' || typeof value === 'boolean') {
      settings[key] = value;
    } else if (key === 'backend' && value !== null && typeof value === 'object') {
      settings[key] = value; // the full form: { url, kind, model, apiKeyEnv, timeoutMs }
    }
  }
  return settings;
}

/** Keys that were sent before and are unset now. */
export function removedKeys(before: ServerSettings, after: ServerSettings): ServerKey[] {
  return SERVER_KEYS.filter((key) => before[key] !== undefined && after[key] === undefined);
}

export function serverPathSetting(): string | undefined {
  const value = config().get<unknown>('serverPath');
  return typeof value === 'string' && value.trim() !== '' ? value.trim() : undefined;
}

type EnableMap = Record<string, unknown>;

function enableMap(): EnableMap {
  const value = config().get<unknown>('enable');
  return value !== null && typeof value === 'object' ? (value as EnableMap) : {};
}

/** `codellama.enable[languageId]`, else `codellama.enable["*"]`, else on. */
export function inlineEnabled(languageId: string): boolean {
  const map = enableMap();
  const value = languageId in map ? map[languageId] : map['*'];
  return value !== false;
}

/**
 * Turns inline completions on or off for one language id (`*` = the default for all) and saves
 * it where the user keeps `codellama.enable`: the workspace settings if it is set there, else
 * the user settings.
 */
export async function setInlineEnabled(languageId: string, enabled: boolean): Promise<void> {
  const cfg = config();
  const seen = cfg.inspect<EnableMap>('enable');
  const inWorkspace = seen?.workspaceValue !== undefined;
  const current = (inWorkspace ? seen?.workspaceValue : seen?.globalValue) ?? seen?.defaultValue ?? { '*': true };
  const next: EnableMap = { ...current, [languageId]: enabled };
  // Keep the map minimal: a language that agrees with "*" needs no entry of its own.
  if (languageId !== '*' && (next['*'] !== false) === enabled) delete next[languageId];
  await cfg.update(
    'enable',
    next,
    inWorkspace ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global,
  );
}
