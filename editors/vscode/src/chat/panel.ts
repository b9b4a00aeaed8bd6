// The chat's webview panel: the page (media/chat.js renders it) and the messages to and from it.
// The page runs under a strict Content Security Policy: its scripts and styles come only from the
// extension's folder (a nonce for scripts), nothing is fetched from the network, and the answer's
// Markdown is rendered with marked and sanitized with DOMPurify before it reaches the page.
import * as crypto from "crypto";
import * as vscode from "vscode";

// What the extension tells the page.
export type ToPage =
  | { type: "user"; text: string; attachments: string[] }
  | { type: "answerStart" }
  | { type: "chunk"; text: string }
  | { type: "answerEnd"; text: string; finishReason: string; notice: string }
  | { type: "answer"; text: string; finishReason: string }
  | { type: "attachments"; labels: string[] }
  | { type: "busy"; busy: boolean }
  | { type: "clear"; title: string };

// What the page asks of the extension.
export type FromPage =
  | { type: "ask"; text: string }
  | { type: "stop" }
  | { type: "apply"; code: string }
  | { type: "copy"; code: string }
  | { type: "attachSelection" }
  | { type: "attachFile" }
  | { type: "clearAttachments" }
  | { type: "newChat" }
  | { type: "sessions" };

export class ChatPanel {
  private panel: vscode.WebviewPanel | undefined;
  // Messages posted before the page has loaded are held until it says "ready".
  private ready = false;
  private queued: ToPage[] = [];

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly onMessage: (message: FromPage) => void
  ) {}

  /** Shows the panel beside the editor, creating it when needed. */
  reveal(): void {
    if (this.panel) {
      this.panel.reveal(undefined, true);
      return;
    }
    const roots = [vscode.Uri.joinPath(this.extensionUri, "media"), vscode.Uri.joinPath(this.extensionUri, "node_modules")];
    this.panel = vscode.window.createWebviewPanel(
      "fimble.chat",
      "Fimble Chat",
      { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true },
      // The conversation lives in the page: keep it when the tab is hidden.
      { enableScripts: true, localResourceRoots: roots, retainContextWhenHidden: true }
    );
    this.panel.webview.html = this.html(this.panel.webview);
    this.panel.webview.onDidReceiveMessage((message: FromPage | { type: "ready" }) => {
      if (message.type === "ready") {
        this.ready = true;
        this.queued.splice(0).forEach((queued) => this.panel?.webview.postMessage(queued));
      } else {
        this.onMessage(message);
      }
    });
    this.panel.onDidDispose(() => {
      this.panel = undefined;
      this.ready = false;
      this.queued = [];
    });
  }

  post(message: ToPage): void {
    if (!this.panel) {
      return;
    }
    if (this.ready) {
      this.panel.webview.postMessage(message);
    } else {
      this.queued.push(message);
    }
  }

  get isOpen(): boolean {
    return this.panel !== undefined;
  }

  dispose(): void {
    this.panel?.dispose();
  }

  private html(webview: vscode.Webview): string {
    const asset = (...path: string[]) => webview.asWebviewUri(vscode.Uri.joinPath(this.extensionUri, ...path));
    const nonce = crypto.randomBytes(16).toString("base64");
    const csp = [
      "default-src 'none'",
      `style-src ${webview.cspSource}`,
      `img-src ${webview.cspSource} data:`,
      `font-src ${webview.cspSource}`,
      `script-src 'nonce-${nonce}'`,
    ].join("; ");
    return `<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="UTF-8">
  <meta http-equiv="Content-Security-Policy" content="${csp}">
  <meta name="viewport" content="width=device-width, initial-scale=1.0">
  <link rel="stylesheet" href="${asset("media", "chat.css")}">
  <title>Fimble Chat</title>
</head>
<body>
  <header>
    <span id="title">New chat</span>
    <span class="spacer"></span>
    <button id="sessions" class="secondary" title="Continue an earlier chat">Sessions</button>
    <button id="new" class="secondary" title="Start a new chat">New</button>
  </header>
  <main id="log" aria-live="polite"></main>
  <footer>
    <div id="attachments"></div>
    <textarea id="input" rows="3" placeholder="Ask Fimble (Enter sends, Shift+Enter for a new line; @file:PATH and @symbol:NAME attach)"></textarea>
    <div class="actions">
      <button id="attachSelection" class="secondary" title="Attach the editor's selection">+ Selection</button>
      <button id="attachFile" class="secondary" title="Attach the editor's file">+ File</button>
      <span class="spacer"></span>
      <button id="stop" class="secondary" hidden>Stop</button>
      <button id="send">Send</button>
    </div>
  </footer>
  <script nonce="${nonce}" src="${asset("node_modules", "marked", "lib", "marked.umd.js")}"></script>
  <script nonce="${nonce}" src="${asset("node_modules", "dompurify", "dist", "purify.min.js")}"></script>
  <script nonce="${nonce}" src="${asset("media", "chat.js")}"></script>
</body>
</html>`;
  }
}
