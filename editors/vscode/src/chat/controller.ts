// The chat's state and its conversation with the server: one session at a time, the attachments
// waiting for the next question, and the answer that is streaming. The webview only displays.
import * as path from "path";
import * as vscode from "vscode";
import { CancellationTokenSource, ExecuteCommandRequest, LanguageClient } from "vscode-languageclient/node";
import { ChatPanel, FromPage } from "./panel";
import {
  APPLY_CODE_BLOCK_COMMAND,
  ApplyCodeBlockResult,
  Attachment,
  ChatCancelRequest,
  ChatChunk,
  ChatChunkNotification,
  ChatRequest,
  ChatResult,
  ChatSessionsRequest,
  OpenChatNotification,
  OpenChatParams,
  Session,
  SessionSummary,
} from "./protocol";

interface RunningAnswer {
  sessionId?: string; // known from the first chunk when the session is new
  cancel: CancellationTokenSource;
}

export class ChatController implements vscode.Disposable {
  private readonly panel: ChatPanel;
  private sessionId: string | undefined;
  private pending: Attachment[] = [];
  private running: RunningAnswer | undefined;
  // The text editor the user was last in: the webview takes the focus, Apply and Attach need it.
  private lastEditor: vscode.TextEditor | undefined = vscode.window.activeTextEditor;
  private readonly disposables: vscode.Disposable[] = [];

  constructor(extensionUri: vscode.Uri, private readonly client: LanguageClient) {
    this.panel = new ChatPanel(extensionUri, (message) => this.fromPage(message));
    this.disposables.push(
      vscode.window.onDidChangeActiveTextEditor((editor) => {
        if (editor) {
          this.lastEditor = editor;
        }
      }),
      client.onNotification(ChatChunkNotification, (chunk) => this.onChunk(chunk)),
      client.onNotification(OpenChatNotification, (params) => this.onOpenChat(params))
    );
  }

  dispose(): void {
    this.running?.cancel.cancel();
    this.panel.dispose();
    this.disposables.forEach((d) => d.dispose());
  }

  /** "Fimble: Open Chat". */
  open(): void {
    this.panel.reveal();
  }

  /** "Fimble: Ask About Selection": opens the chat with the selection (or the file) attached. */
  askAboutSelection(): void {
    this.panel.reveal();
    this.attach(this.editor()?.selection.isEmpty === false ? "selection" : "file");
  }

  /** fimble/openChat: a chat code action ran (Explain, Fix, Write tests); ask in a new session. */
  private onOpenChat(params: OpenChatParams): void {
    this.newChat();
    this.panel.reveal();
    this.pending = params.attachments ?? [];
    void this.ask(params.prompt);
  }

  private fromPage(message: FromPage): void {
    switch (message.type) {
      case "ask":
        void this.ask(message.text);
        break;
      case "stop":
        void this.stop();
        break;
      case "apply":
        void this.apply(message.code);
        break;
      case "copy":
        void vscode.env.clipboard.writeText(message.code);
        break;
      case "attachSelection":
        this.attach("selection");
        break;
      case "attachFile":
        this.attach("file");
        break;
      case "clearAttachments":
        this.pending = [];
        this.showAttachments();
        break;
      case "newChat":
        this.newChat();
        break;
      case "sessions":
        void this.pickSession();
        break;
    }
  }

  private async ask(message: string): Promise<void> {
    if (this.running) {
      vscode.window.showWarningMessage("Fimble is still answering; press Stop first.");
      return;
    }
    const attachments = this.pending;
    this.pending = [];
    this.showAttachments();
    this.panel.post({ type: "user", text: message, attachments: attachments.map(label) });
    this.panel.post({ type: "answerStart" });
    this.panel.post({ type: "busy", busy: true });
    const running: RunningAnswer = { sessionId: this.sessionId, cancel: new CancellationTokenSource() };
    this.running = running;
    let result: ChatResult;
    try {
      result = await this.client.sendRequest(
        ChatRequest,
        { sessionId: this.sessionId ?? null, message, attachments, ...answerLimit() },
        running.cancel.token
      );
    } catch (error) {
      // A cancelled request without a session id yet, or a server error.
      const cancelled = running.cancel.token.isCancellationRequested;
      result = {
        sessionId: running.sessionId ?? "",
        messageIndex: -1,
        text: "",
        finishReason: cancelled ? "cancelled" : "error",
        droppedTurns: 0,
        notice: cancelled ? "" : `${error instanceof Error ? error.message : error}`,
      };
    } finally {
      this.running = undefined;
      running.cancel.dispose();
      this.panel.post({ type: "busy", busy: false });
    }
    this.sessionId = result.sessionId || this.sessionId;
    this.panel.post({ type: "answerEnd", text: result.text, finishReason: result.finishReason, notice: result.notice });
    if (result.finishReason === "error") {
      vscode.window.showErrorMessage(`Fimble chat: ${result.notice || "the answer failed"}`);
    }
  }

  private onChunk(chunk: ChatChunk): void {
    const running = this.running;
    if (!running || (running.sessionId && running.sessionId !== chunk.sessionId)) {
      return; // a late piece of an answer that has already ended
    }
    running.sessionId = chunk.sessionId;
    this.panel.post({ type: "chunk", text: chunk.text });
  }

  private async stop(): Promise<void> {
    const running = this.running;
    if (!running) {
      return;
    }
    if (running.sessionId) {
      // The request then resolves with finishReason "cancelled" and the text so far.
      await this.client.sendRequest(ChatCancelRequest, { sessionId: running.sessionId });
    } else {
      running.cancel.cancel(); // no piece yet, so no session id: $/cancelRequest
    }
  }

  /** Replaces the editor's selection (or inserts at its cursor) with `code`, through the server. */
  private async apply(code: string): Promise<void> {
    const editor = this.editor();
    if (!editor) {
      vscode.window.showWarningMessage("Fimble: open the file to apply the code to, then press Apply again.");
      return;
    }
    const c2p = this.client.code2ProtocolConverter;
    const selection = editor.selection;
    // Whole lines selected (the selection ends at the start of a line): the code replaces them as lines.
    if (!selection.isEmpty && selection.end.character === 0 && !code.endsWith("\n")) {
      code += "\n";
    }
    const args = { uri: c2p.asUri(editor.document.uri), code, range: c2p.asRange(selection) };
    try {
      const result = (await this.client.sendRequest(ExecuteCommandRequest.type, {
        command: APPLY_CODE_BLOCK_COMMAND,
        arguments: [args],
      })) as ApplyCodeBlockResult | null;
      if (result && !result.applied) {
        vscode.window.showWarningMessage(`Fimble: the code was not applied: ${result.reason || "the edit was refused"}.`);
      }
    } catch (error) {
      vscode.window.showErrorMessage(`Fimble: could not apply the code: ${error instanceof Error ? error.message : error}`);
    }
  }

  private attach(kind: "selection" | "file"): void {
    const editor = this.editor();
    if (!editor) {
      vscode.window.showWarningMessage("Fimble: open a file to attach it or its selection.");
      return;
    }
    const uri = this.client.code2ProtocolConverter.asUri(editor.document.uri);
    if (kind === "selection" && !editor.selection.isEmpty) {
      this.pending.push({ kind, uri, range: this.client.code2ProtocolConverter.asRange(editor.selection) });
    } else {
      this.pending.push({ kind: "file", uri });
    }
    this.showAttachments();
  }

  private showAttachments(): void {
    this.panel.post({ type: "attachments", labels: this.pending.map(label) });
  }

  private newChat(): void {
    if (this.running) {
      void this.stop();
    }
    this.sessionId = undefined;
    this.panel.post({ type: "clear", title: "New chat" });
  }

  private async pickSession(): Promise<void> {
    try {
      const list = (await this.client.sendRequest(ChatSessionsRequest, { action: "list" })) as {
        sessions: SessionSummary[];
        problems?: string[];
      };
      for (const problem of list.problems ?? []) {
        vscode.window.showWarningMessage(`Fimble: ${problem}`);
      }
      const picked = await vscode.window.showQuickPick(
        list.sessions.map((s) => ({ label: s.title, description: `${s.messages} messages, ${when(s.updated)}`, id: s.id })),
        { placeHolder: list.sessions.length ? "Continue a chat" : "No chats yet" }
      );
      if (!picked) {
        return;
      }
      const session = (await this.client.sendRequest(ChatSessionsRequest, { action: "get", sessionId: picked.id })) as Session;
      this.newChat();
      this.sessionId = session.id;
      this.panel.post({ type: "clear", title: session.title });
      for (const message of session.messages) {
        if (message.role === "user") {
          this.panel.post({ type: "user", text: message.content, attachments: [] });
        } else {
          this.panel.post({ type: "answer", text: message.content, finishReason: message.finishReason ?? "stop" });
        }
      }
    } catch (error) {
      vscode.window.showErrorMessage(`Fimble: could not read the chat sessions: ${error instanceof Error ? error.message : error}`);
    }
  }

  private editor(): vscode.TextEditor | undefined {
    const editor = vscode.window.activeTextEditor ?? this.lastEditor;
    return editor && !editor.document.isClosed ? editor : undefined;
  }
}

// fimble.chat.maxTokens: 0 (the default) leaves the answer's length to the server.
function answerLimit(): { maxTokens?: number } {
  const maxTokens = vscode.workspace.getConfiguration("fimble").get<number>("chat.maxTokens") ?? 0;
  return maxTokens > 0 ? { maxTokens } : {};
}

function label(attachment: Attachment): string {
  if (attachment.kind === "symbol") {
    return `@${attachment.name}`;
  }
  const name = path.basename(vscode.Uri.parse(attachment.uri).path);
  if (attachment.kind === "selection") {
    const { start, end } = attachment.range;
    // A selection of whole lines ends at the start of the next line, which it does not include.
    const lastLine = end.character === 0 && end.line > start.line ? end.line - 1 : end.line;
    return `${name}:${start.line + 1}-${lastLine + 1}`;
  }
  return name;
}

// The server gives seconds since the epoch.
function when(updated: string | number): string {
  return typeof updated === "number" ? new Date(updated * 1000).toLocaleString() : updated;
}
