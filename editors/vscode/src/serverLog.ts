// The server's stderr in the "Codellama" output channel. codellama-lsp logs to stderr *and*
// mirrors its own log lines as window/logMessage; languageclient would show each twice, the stderr
// copy tagged [error] whatever its level. Here the mirrored ones go to debug, other libraries'
// chatter (e.g. every cancelled completion request) to debug, and anything else, such as a
// panic message, stays an error, where it is seen.
import * as readline from 'node:readline';
import type { Readable } from 'node:stream';
import type { LogOutputChannel } from 'vscode';

// tracing's default format: "2026-12-03T03:39:04.501262Z  INFO codellama_lsp::lsp::server: text"
const TRACING_LINE = /^\S+Z\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+([A-Za-z_][\w:]*): ?(.*)$/;

function lines(input: Readable, each: (line: string) => void): void {
  readline.createInterface({ input, crlfDelay: Infinity, terminal: false }).on('line', each);
}

export function pipeServerStderr(input: Readable, channel: LogOutputChannel): void {
  lines(input, (line) => {
    const match = TRACING_LINE.exec(line);
    if (!match) {
      channel.error(line);
      return;
    }
    const [, level, target, text] = match;
    const message = `[stderr] ${target}: ${text}`;
    if (target.startsWith('codellama_lsp') || level === 'INFO' || level === 'DEBUG' || level === 'TRACE') {
      channel.debug(message);
    } else if (level === 'WARN') {
      channel.warn(message);
    } else {
      channel.error(message);
    }
  });
}

/** stdout carries LSP messages; anything else printed there (it should not be) is shown as is. */
export function pipeServerStdout(input: Readable, channel: LogOutputChannel): void {
  lines(input, (line) => channel.info(line));
}
