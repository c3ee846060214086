#!/usr/bin/env node
// Drives the extension in a real VS Code (code-server) with headless Chromium and checks what a
// user would see. Started by ../test-e2e.sh, which starts code-server and computes the expected
// texts. Usage: node test/e2e.mjs CONFIG.json   (the fields are read below)
// Exit 0 when every check passed; otherwise "e2e: FAIL: reason" on stderr and exit 1.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const {
  url, // code-server base URL
  folder, // the workspace folder
  file, // file name inside it
  typed, // what to type at the end of the file
  expectedAfterAccept, // the whole file after Tab
  docstringAt, // { line, character } 1-based, on the function name
  docstringName, // the function's name
  screenshot, // where the ghost-text screenshot goes
  playwrightDir,
  chromium,
  modelNames, // the ready status must name one of them
} = config;
const timeoutMs = config.timeoutMs ?? 120000;

const log = (message) => process.stderr.write(`e2e: ${message}\n`);
/** JSON with non-ASCII escaped: the tiny test model writes private-use characters. */
const show = (value) =>
  JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
class Failure extends Error {}
const fail = (message) => {
  throw new Failure(message);
};

const req = createRequire(path.join(path.resolve(playwrightDir), 'noop.js'));
const { chromium: pwChromium } = req('playwright-core');

const filePath = path.join(folder, file);
const seenNotes = new Set();
const timings = {};
let browser;
let page;

async function ui() {
  const state = await page.evaluate(() => {
    const text = (el) => (el.innerText || el.getAttribute('aria-label') || '').replace(/\s+/g, ' ').trim();
    return {
      status: [...document.querySelectorAll('.part.statusbar .statusbar-item')].map(text).filter(Boolean),
      notes: [...document.querySelectorAll('.notification-list-item')].map((el) => {
        const message = el.querySelector('.notification-list-item-message');
        return message ? text(message) : text(el);
      }),
    };
  });
  for (const note of state.notes) seenNotes.add(note);
  return state;
}

/** Polls `probe` until it returns a truthy value; `nudge` (if any) runs every `nudgeMs`. */
async function waitFor(what, probe, { timeout = timeoutMs, nudge, nudgeMs = 4000 } = {}) {
  const start = Date.now();
  let last = start;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() - start > timeout) fail(`timed out after ${timeout / 1000}s waiting for ${what}`);
    if (nudge && Date.now() - last > nudgeMs) {
      last = Date.now();
      await nudge();
    }
    await page.waitForTimeout(250);
  }
}

const readFile = () => fs.readFileSync(filePath, 'utf8');

const GHOST_SELECTOR =
  '.monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text-decoration-preview, .monaco-editor .ghost-text';

/** The visible lines of the editor as real text: ghost text left out, non-breaking spaces as spaces. */
async function committedLines() {
  return page.evaluate((ghostSelector) => {
    const lines = document.querySelector('.editor-instance .monaco-editor .view-lines');
    if (!lines) return [];
    return [...lines.querySelectorAll('.view-line')].map((line) => {
      const copy = line.cloneNode(true);
      for (const ghost of copy.querySelectorAll(ghostSelector)) ghost.remove();
      return (copy.textContent || '').replace(/\u00a0/g, ' ');
    });
  }, GHOST_SELECTOR);
}

async function ghostText() {
  return page.evaluate(
    (ghostSelector) => [...document.querySelectorAll(ghostSelector)].map((el) => el.textContent).join('\n'),
    GHOST_SELECTOR,
  );
}

async function save(why) {
  await page.keyboard.press('Control+S');
  // A saved editor tab loses its "dirty" mark.
  await waitFor(`the save after ${why}`, async () => (await page.locator('.tabs-container .tab.active.dirty').count()) === 0, {
    timeout: 20000,
    nudge: () => page.keyboard.press('Control+S'),
  });
}

async function goTo(line, character) {
  await page.keyboard.press('Control+G');
  const input = page.locator('.quick-input-widget .quick-input-box input');
  await input.waitFor({ state: 'visible', timeout: 15000 });
  await input.fill(`:${line}:${character}`);
  await page.keyboard.press('Enter');
  await input.waitFor({ state: 'hidden', timeout: 15000 });
}

/** Runs a command palette command by its full title. */
async function runCommand(title) {
  await page.keyboard.press('F1');
  const palette = page.locator('.quick-input-widget .quick-input-box input');
  await palette.waitFor({ state: 'visible', timeout: 15000 });
  await palette.fill(`>${title}`);
  await page.locator('.quick-input-widget .monaco-list-row', { hasText: title }).first().waitFor({ state: 'visible', timeout: 15000 });
  await page.keyboard.press('Enter');
}

/**
 * Opens the light-bulb menu (Ctrl+.) and runs the action titled `title`. `prepare` puts the
 * cursor or selection in place before each attempt (a failed attempt ends with Escape, which
 * drops a selection).
 */
async function pickCodeAction(title, prepare = async () => {}) {
  const rows = page.locator('.action-widget .monaco-list-row');
  await waitFor(`the code action "${title}"`, async () => {
    if (!(await rows.first().isVisible().catch(() => false))) {
      // (No Escape before: in the editor it would drop the selection.)
      await prepare();
      await page.keyboard.press('Control+Period');
      await rows.first().waitFor({ state: 'visible', timeout: 8000 }).catch(() => {});
    }
    // Walk the menu with the keyboard (a click is caught by the menu's pointer block).
    for (let i = 0; i < 12; i++) {
      const focused = await page.locator('.action-widget .monaco-list-row.focused')
        .getAttribute('aria-label', { timeout: 1000 }).catch(() => null);
      if (focused?.includes(title)) return true;
      await page.keyboard.press('ArrowDown');
    }
    await page.keyboard.press('Escape');
    return false;
  }, { timeout: 60000 });
  await page.keyboard.press('Enter');
}

async function main() {
  const t0 = Date.now();
  const lap = (name, since) => {
    timings[name] = ((Date.now() - since) / 1000).toFixed(1) + 's';
    return Date.now();
  };
  browser = await pwChromium.launch({
    executablePath: chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(String(error.message || error)));

  await page.goto(`${url}/?folder=${encodeURIComponent(folder)}`, { waitUntil: 'domcontentloaded', timeout: timeoutMs });
  await page.locator('.monaco-workbench').waitFor({ state: 'visible', timeout: timeoutMs });
  await page.locator('.part.statusbar').waitFor({ state: 'visible', timeout: timeoutMs });
  let t = lap('workbench', t0);

  // Open the file with Quick Open (retried: the file index may not be ready at once).
  await page.locator('.part.editor').click({ position: { x: 200, y: 200 } }).catch(() => {});
  await waitFor(`an editor tab for ${file}`, async () => {
    if (await page.locator(`.tabs-container .tab.active[aria-label*="${file}"]`).count()) return true;
    await page.keyboard.press('Escape');
    await page.keyboard.press('Control+P');
    const input = page.locator('.quick-input-widget .quick-input-box input');
    await input.waitFor({ state: 'visible', timeout: 10000 });
    await input.fill(file);
    const row = page.locator('.quick-input-widget .monaco-list-row', { hasText: file }).first();
    await row.waitFor({ state: 'visible', timeout: 10000 }).catch(() => {});
    await page.keyboard.press('Enter');
    await page.waitForTimeout(500);
    return (await page.locator(`.tabs-container .tab.active[aria-label*="${file}"]`).count()) > 0;
  }, { timeout: 60000 });
  await page.locator('.editor-instance .monaco-editor .view-lines .view-line').first().waitFor({ state: 'visible', timeout: timeoutMs });
  t = lap('open file', t);

  // 1. The status bar item says the model is ready.
  const ready = await waitFor('the status bar item "Codellama ready"', async () => {
    const state = await ui();
    return state.status.find((item) => item.includes('Codellama ready'));
  });
  log(`status bar: ${show(ready)}`);
  if (!modelNames.some((name) => ready.includes(name))) fail(`the ready status names none of ${show(modelNames)}: ${show(ready)}`);
  t = lap('status ready', t);

  // 2. Type at the end of the file; the suggestion shows as ghost text.
  await page.locator('.editor-instance .monaco-editor .view-lines').first().click();
  await page.keyboard.press('Control+End');
  await page.keyboard.type(typed, { delay: 40 });
  const ghost = await waitFor('ghost text', async () => (await ghostText()).trim(), {
    // VS Code asks by itself after typing; if that answer was superseded, ask again (Alt+\).
    nudge: () => page.keyboard.press('Alt+Backslash'),
  });
  log(`ghost text: ${show(ghost)}`);
  await page.waitForTimeout(300); // let the view zone of a multi-line suggestion paint
  fs.mkdirSync(path.dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot });
  t = lap('ghost text', t);

  // 3. Tab accepts it; the saved file is what the CLI oracle predicted.
  // Accepted text becomes real text in the editor. (Do not wait for the ghost text to vanish: VS Code
  // may ask again right after the edit, and the next suggestion shows at once.)
  await page.keyboard.press('Tab');
  const firstGhostLine = ghost.split('\n')[0];
  await waitFor('the ghost text to be accepted into the editor', async () =>
    (await committedLines()).some((line) => line.includes(firstGhostLine)), { timeout: 10000 },
  ).catch(async (error) => {
    log(`ghost text now: ${show(await ghostText())}; editor lines: ${show(await committedLines())}`);
    throw error;
  });
  await save('accepting');
  const accepted = await waitFor('the file on disk to hold the accepted suggestion', () => {
    const text = readFile();
    return text === expectedAfterAccept ? text : '';
  }, { timeout: 10000 }).catch(() => {
    fail(`after Tab + save the file differs from the CLI oracle.\n  expected: ${show(expectedAfterAccept)}\n  actual:   ${show(readFile())}`);
  });
  log(`accepted; ${file} now has ${accepted.split('\n').length} lines`);
  t = lap('accept + save', t);

  // 4. The light bulb (Ctrl+.) offers "Generate docstring for `name`"; it inserts a docstring.
  const title = `Generate docstring for \`${docstringName}\``;
  await pickCodeAction(title, () => goTo(docstringAt.line, docstringAt.character));
  log(`picked "${title}"`);
  await waitFor('the docstring in the editor', async () =>
    (await page.locator('.editor-instance .monaco-editor .view-lines').first().innerText()).includes('"""'));
  await save('the docstring');
  const lines = await waitFor('the docstring on disk', () => {
    const all = readFile().split('\n');
    return all[docstringAt.line]?.trim().startsWith('"""') ? all : undefined;
  }, { timeout: 10000 }).catch(() => {
    fail(`no """ docstring on line ${docstringAt.line + 1} of ${file}:\n${readFile()}`);
  });
  log(`docstring at line ${docstringAt.line + 1}: ${show(lines[docstringAt.line])}`);
  t = lap('docstring', t);

  // 5. "Edit with instruction…" from the light bulb asks for the instruction (the middleware).
  const before = readFile();
  const defLine = before.split('\n').findIndex((l) => l.startsWith('def perimeter')) + 1;
  if (defLine === 0) fail(`no "def perimeter" in ${file}:\n${before}`);
  await pickCodeAction('Edit with instruction…', async () => {
    await goTo(defLine, 1);
    await page.keyboard.press('Shift+ArrowDown');
    await page.keyboard.press('Shift+End');
  });
  const box = page.locator('.quick-input-widget .quick-input-box input');
  await box.waitFor({ state: 'visible', timeout: 15000 }).catch(() => fail('"Edit with instruction…" showed no input box'));
  const boxTitle = (await page.locator('.quick-input-widget .quick-input-title').innerText().catch(() => '')).trim();
  if (!boxTitle.includes('Codellama')) fail(`the input box is not ours: title ${show(boxTitle)}`);
  await box.fill('use math.tau');
  await page.keyboard.press('Enter');
  // The server answers with workspace/applyEdit (the tiny model's text is gibberish), or, when it
  // has nothing to change, with a message: either shows the command went through.
  const outcome = await waitFor('the edit or a message about it', async () => {
    if ((await page.locator('.tabs-container .tab.active.dirty').count()) > 0) return 'edited';
    const notes = (await ui()).notes.join('\n');
    return /codellama-lsp: .*(edit|change|nothing)/i.test(notes) ? `message: ${notes}` : undefined;
  });
  log(`edit with instruction: ${show(outcome)}`);
  if (outcome === 'edited') await save('the edit');
  t = lap('edit with instruction', t);

  // 6. The status item's menu turns inline completions off for Python, in the user settings.
  await page.locator('.part.statusbar .statusbar-item', { hasText: 'Codellama ready' }).first().click();
  const off = page.locator('.quick-input-widget .monaco-list-row', { hasText: 'Disable inline completions for python' }).first();
  await off.waitFor({ state: 'visible', timeout: 15000 }).catch(() => fail('the status item\'s menu has no "Disable inline completions for python"'));
  await off.click();
  await waitFor('the status item to say "off for python"', async () => (await ui()).status.some((i) => i.includes('off for python')), { timeout: 15000 });
  const settings = JSON.parse(fs.readFileSync(config.settingsFile, 'utf8'));
  if (settings['codellama.enable']?.python !== false) fail(`codellama.enable is ${show(settings['codellama.enable'])}, not {python: false}`);
  log(`status menu: codellama.enable = ${show(settings['codellama.enable'])}`);
  t = lap('status menu', t);

  // 7. "Codellama: Chat" opens the chat view; a message gets an answer there.
  await runCommand('Codellama: Chat');
  const chat = page.frameLocator('iframe.webview').frameLocator('#active-frame');
  await chat.locator('#input').waitFor({ state: 'visible', timeout: 30000 }).catch(() => fail('the chat view did not open'));
  await chat.locator('#input').fill('What does area() return?');
  await chat.locator('#send').click();
  const partial = new Set(); // lengths of the answer seen while it streams (codellama/chatStream)
  const answer = await waitFor('an answer in the chat view', async () => {
    const entries = await chat.locator('.entry').allInnerTexts().catch(() => []);
    const last = entries[entries.length - 1] ?? '';
    const idle = await chat.locator('#send').isEnabled().catch(() => false);
    if (!idle && last.trim() !== '…') partial.add(last.length);
    return entries.length >= 2 && idle && last.trim() !== '' && last.trim() !== '…' ? last : undefined;
  });
  log(`chat: ${partial.size} partial answer(s) seen while streaming`);
  const kind = await chat.locator('.entry').last().getAttribute('class');
  if (!kind.includes('assistant')) fail(`the chat answer is an ${kind}: ${show(answer)}`);
  log(`chat answer: ${show(answer.slice(0, 80))}${answer.length > 80 ? '…' : ''}`);
  const chatShot = path.join(path.dirname(screenshot), 'chat.png');
  await page.screenshot({ path: chatShot });
  log(`chat screenshot: ${chatShot}`);
  t = lap('chat', t);

  // 8. The light bulb's "Explain this code" answers in the chat view (not in a notification).
  const entriesBefore = await chat.locator('.entry').count();
  await page.locator('.tabs-container .tab', { hasText: file }).first().click();
  await pickCodeAction('Explain this code', async () => {
    await goTo(4, 1);
    await page.keyboard.press('Shift+ArrowDown');
    await page.keyboard.press('Shift+ArrowDown');
  });
  const explained = await waitFor('the explanation in the chat view', async () => {
    const entries = await chat.locator('.entry').allInnerTexts().catch(() => []);
    const idle = await chat.locator('#send').isEnabled().catch(() => false);
    const last = entries[entries.length - 1] ?? '';
    return entries.length >= entriesBefore + 2 && idle && last.trim() !== '…' ? entries.slice(entriesBefore) : undefined;
  });
  if (!explained[0].includes('Explain') || !explained[0].includes(`${file}:4-5`)) fail(`unexpected question in the chat view: ${show(explained[0])}`);
  log(`explain this code: ${show(explained[0])}`);
  t = lap('explain', t);

  // 9. "Codellama: Show prompt" (with the chat view focused: it uses the last editor).
  await chat.locator('#input').click();
  await runCommand('Codellama: Show prompt');
  const promptTab = page.locator('.tabs-container .tab', { hasText: `${file}.prompt.txt` }).first();
  await promptTab.waitFor({ state: 'visible', timeout: 30000 }).catch(() => fail('"Codellama: Show prompt" opened no prompt document'));
  await promptTab.click();
  await waitFor('the prompt document\'s header', async () =>
    // (Monaco draws spaces as no-break spaces.)
    (await page.locator('.editor-group-container.active .monaco-editor .view-lines').first().innerText())
      .replace(/\u00a0/g, ' ').includes('Why this suggestion?'), { timeout: 15000 });
  log('show prompt: the prompt document is open');
  lap('show prompt', t);

  await ui();
  process.stdout.write(`NOTIFICATIONS SEEN:\n${[...seenNotes].map((n) => `  ${n}`).join('\n') || '  (none)'}\n`);
  if (pageErrors.length) process.stdout.write(`PAGE ERRORS:\n${pageErrors.map((e) => `  ${e}`).join('\n')}\n`);
  process.stdout.write(`BROWSER TIMINGS: ${JSON.stringify(timings)} total ${((Date.now() - t0) / 1000).toFixed(1)}s\n`);
  await browser.close();
}

main().catch(async (error) => {
  const message = error instanceof Failure ? error.message : error?.stack ?? String(error);
  if (page) {
    try {
      const state = await ui();
      const shot = screenshot.replace(/\.png$/, '') + '-failure.png';
      await page.screenshot({ path: shot });
      log(`screenshot of the failing state: ${shot}`);
      process.stdout.write(`STATUS BAR:\n${state.status.map((s) => `  ${s}`).join('\n')}\n`);
      process.stdout.write(`NOTIFICATIONS SEEN:\n${[...seenNotes].map((n) => `  ${n}`).join('\n') || '  (none)'}\n`);
      process.stdout.write(`BROWSER TIMINGS: ${JSON.stringify(timings)}\n`);
    } catch {
      /* the page may be gone */
    }
  }
  if (browser) await browser.close().catch(() => {});
  process.stderr.write(`e2e: FAIL: ${message}\n`);
  process.exit(1);
});
