// The tests' hands in the browser: playwright-core attached to a running Chromium over the DevTools
// protocol, doing one action per JSON line read from stdin and answering each with one JSON line
// on stdout ({id, ok, value} or {id, ok: false, error}). The tests (workbench.py) decide what to
// do; this file only knows how to find elements, in nested frames too (webviews), and press keys.
//
//   node browser.js PLAYWRIGHT_CORE_DIR DEVTOOLS_URL
"use strict";
const readline = require("readline");
const { chromium } = require(process.argv[2]);

const DEFAULT_TIMEOUT_MS = 30000;

// Every element matching `selector` inside the frames named by `frames` (outermost first).
function all(page, { selector, frames = [] }) {
  let scope = page;
  for (const frame of frames) {
    scope = scope.frameLocator(frame);
  }
  return scope.locator(selector);
}

// The first of them: actions wait for it to appear.
function locate(page, args) {
  return all(page, args).first();
}

const actions = {
  goto: (page, { url, timeout_ms }) => page.goto(url, { timeout: timeout_ms }).then(() => null),
  wait: (page, args) => locate(page, args).waitFor({ state: args.state || "visible", timeout: args.timeout_ms }).then(() => null),
  click: (page, args) => locate(page, args).click({ timeout: args.timeout_ms }).then(() => null),
  text: (page, args) => locate(page, args).innerText({ timeout: args.timeout_ms }),
  // Over every match, without waiting for one to appear.
  count: (page, args) => all(page, args).count(),
  texts: (page, args) => all(page, args).allInnerTexts(),
  value: (page, args) => locate(page, args).inputValue({ timeout: args.timeout_ms }),
  press: (page, { keys }) => page.keyboard.press(keys).then(() => null),
  type: (page, { text, delay_ms = 20 }) => page.keyboard.type(text, { delay: delay_ms }).then(() => null),
  // Resolves in the page's next idle period, or after `timeout_ms` if none comes.
  idle: (page, { timeout_ms }) => page.evaluate((timeout) => new Promise((resolve) => requestIdleCallback(() => resolve(null), { timeout })), timeout_ms),
  screenshot: (page, { path }) => page.screenshot({ path }).then(() => null),
  // What holds the keyboard focus: an iframe when a webview has it.
  focused: (page) =>
    page.evaluate(() => {
      const element = document.activeElement;
      if (!element) return "nothing";
      const classes = [...element.classList].map((name) => `.${name}`).join("");
      return `${element.tagName.toLowerCase()}${classes} ${element.getAttribute("aria-label") || ""}`.trim();
    }),
  viewport: (page, { width, height }) => page.setViewportSize({ width, height }).then(() => null),
};

async function main() {
  const browser = await chromium.connectOverCDP(process.argv[3]);
  const context = browser.contexts()[0];
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(DEFAULT_TIMEOUT_MS);
  const reply = (message) => process.stdout.write(JSON.stringify(message) + "\n");
  reply({ id: 0, ok: true, value: "ready" });

  // One action at a time, in the order they came: the tests wait for each answer anyway.
  let queue = Promise.resolve();
  const lines = readline.createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    const request = JSON.parse(line);
    queue = queue.then(async () => {
      if (request.op === "close") {
        await browser.close();
        reply({ id: request.id, ok: true, value: null });
        process.exit(0);
      }
      const action = actions[request.op];
      try {
        if (!action) throw new Error(`no action ${request.op}`);
        reply({ id: request.id, ok: true, value: await action(page, { timeout_ms: DEFAULT_TIMEOUT_MS, ...request }) });
      } catch (error) {
        reply({ id: request.id, ok: false, error: String(error && error.message ? error.message : error) });
      }
    });
  });
  lines.on("close", () => process.exit(0));
}

main().catch((error) => {
  process.stderr.write(`browser.js: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
