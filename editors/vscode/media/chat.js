// @ts-check
// The chat page inside the webview. It only displays: questions and answers come from the
// extension (src/chat/controller.ts) as messages, and buttons send messages back. Answers are
// Markdown, rendered with marked and sanitized with DOMPurify (both loaded before this script).
/* global acquireVsCodeApi, marked, DOMPurify */
(function () {
  // @ts-ignore: provided by VS Code
  const vscode = acquireVsCodeApi();
  const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
  const log = $("log");
  const input = /** @type {HTMLTextAreaElement} */ ($("input"));
  const send = /** @type {HTMLButtonElement} */ ($("send"));
  const stop = /** @type {HTMLButtonElement} */ ($("stop"));
  const attachments = $("attachments");
  const title = $("title");
  const RENDER_EVERY_MS = 50; // re-rendering the whole answer on every piece is wasted work

  /** @type {{ element: HTMLElement, text: string, timer: number | undefined } | undefined} */
  let answer;

  /** @param {string} markdown */
  function toSafeHtml(markdown) {
    // @ts-ignore: globals from the vendored scripts
    const html = marked.parse(markdown, { async: false, gfm: true });
    // @ts-ignore
    return DOMPurify.sanitize(html, { FORBID_TAGS: ["style", "form", "input"], FORBID_ATTR: ["style"] });
  }

  function nearBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  }

  /** @param {() => void} change */
  function keepScrolled(change) {
    const follow = nearBottom();
    change();
    if (follow) {
      log.scrollTop = log.scrollHeight;
    }
  }

  /** @param {HTMLElement} element @param {string} text */
  function render(element, text) {
    element.innerHTML = toSafeHtml(text);
    for (const pre of element.querySelectorAll("pre")) {
      const code = pre.querySelector("code");
      if (!code) continue;
      const bar = document.createElement("div");
      bar.className = "code-actions";
      for (const [label, type, hint] of [
        ["Apply", "apply", "Replace the editor's selection (or insert at its cursor) with this code"],
        ["Copy", "copy", "Copy this code"],
      ]) {
        const button = document.createElement("button");
        button.textContent = label;
        button.title = hint;
        button.className = "secondary";
        // marked ends a code block's text with a newline that is not part of the code.
        button.addEventListener("click", () => vscode.postMessage({ type, code: (code.textContent || "").replace(/\n$/, "") }));
        bar.appendChild(button);
      }
      pre.before(bar);
    }
  }

  /** @param {string} className @returns {HTMLElement} */
  function addTurn(className, heading) {
    const turn = document.createElement("section");
    turn.className = `turn ${className}`;
    const name = document.createElement("div");
    name.className = "who";
    name.textContent = heading;
    const body = document.createElement("div");
    body.className = "body";
    turn.append(name, body);
    keepScrolled(() => log.appendChild(turn));
    return body;
  }

  /** @param {HTMLElement} element @param {string} text */
  function addNote(element, text) {
    const note = document.createElement("div");
    note.className = "note";
    note.textContent = text;
    element.appendChild(note);
  }

  /** @param {HTMLElement} element @param {string} finishReason @param {string} notice */
  function endNotes(element, finishReason, notice) {
    if (finishReason === "cancelled") addNote(element, "(stopped)");
    if (finishReason === "length") addNote(element, "(cut off at the length limit)");
    if (finishReason === "error") addNote(element, `Error: ${notice || "the answer failed"}`);
    else if (notice && finishReason !== "cancelled") addNote(element, notice); // a stopped answer's notice repeats "(stopped)"
  }

  function renderAnswerSoon() {
    if (!answer || answer.timer !== undefined) return;
    const current = answer;
    current.timer = window.setTimeout(() => {
      current.timer = undefined;
      keepScrolled(() => render(current.element, current.text));
    }, RENDER_EVERY_MS);
  }

  window.addEventListener("message", (event) => {
    const message = event.data;
    switch (message.type) {
      case "user": {
        const body = addTurn("user", "You");
        body.textContent = message.text;
        if (message.attachments.length) addNote(body, `attached: ${message.attachments.join(", ")}`);
        break;
      }
      case "answerStart":
        answer = { element: addTurn("assistant", "Fimble"), text: "", timer: undefined };
        answer.element.classList.add("streaming");
        break;
      case "chunk":
        if (answer) {
          answer.text += message.text;
          renderAnswerSoon();
        }
        break;
      case "answerEnd":
        if (answer) {
          window.clearTimeout(answer.timer);
          const element = answer.element;
          element.classList.remove("streaming");
          // The result is the whole answer; it wins over the pieces if one was lost.
          keepScrolled(() => {
            render(element, message.text || answer?.text || "");
            endNotes(element, message.finishReason, message.notice);
          });
          answer = undefined;
        }
        break;
      case "answer": {
        const body = addTurn("assistant", "Fimble");
        render(body, message.text);
        endNotes(body, message.finishReason, "");
        break;
      }
      case "attachments":
        attachments.replaceChildren();
        for (const label of message.labels) {
          const chip = document.createElement("span");
          chip.className = "chip";
          chip.textContent = label;
          attachments.appendChild(chip);
        }
        if (message.labels.length) {
          const clear = document.createElement("button");
          clear.className = "secondary small";
          clear.textContent = "×";
          clear.title = "Remove the attachments";
          clear.addEventListener("click", () => vscode.postMessage({ type: "clearAttachments" }));
          attachments.appendChild(clear);
        }
        break;
      case "busy":
        stop.hidden = !message.busy;
        send.disabled = message.busy;
        break;
      case "clear":
        log.replaceChildren();
        answer = undefined;
        title.textContent = message.title;
        break;
    }
  });

  function ask() {
    const text = input.value.trim();
    if (!text || send.disabled) return;
    input.value = "";
    vscode.postMessage({ type: "ask", text });
  }

  send.addEventListener("click", ask);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ask();
    }
  });
  stop.addEventListener("click", () => vscode.postMessage({ type: "stop" }));
  for (const type of ["attachSelection", "attachFile", "newChat", "sessions"]) {
    const id = type === "newChat" ? "new" : type;
    $(id).addEventListener("click", () => vscode.postMessage({ type }));
  }
  vscode.postMessage({ type: "ready" });
  input.focus();
})();
