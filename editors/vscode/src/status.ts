// The status bar item: what the server says about its model and workspace index (fimble/status,
// docs/chat-protocol.md), and whether the server runs at all. A click opens the "Fimble" output
// channel, where each change of state is written too.
import * as vscode from "vscode";
import { LanguageClient, NotificationType, State } from "vscode-languageclient/node";

export interface ServerStatus {
  state: "starting" | "loading" | "indexing" | "ready" | "error" | "stopped";
  model: string;
  index: string;
  problem: string;
}

export const StatusNotification = new NotificationType<ServerStatus>("fimble/status");

const STARTING: ServerStatus = { state: "starting", model: "starting", index: "none", problem: "" };

// The item's look for each state: an icon, the word after "Fimble" and its background.
const LOOKS: Record<ServerStatus["state"], { icon: string; word: string; background?: string }> = {
  starting: { icon: "$(loading~spin)", word: "starting" },
  loading: { icon: "$(loading~spin)", word: "loading" },
  indexing: { icon: "$(sync~spin)", word: "indexing" },
  ready: { icon: "$(check)", word: "ready" },
  error: { icon: "$(error)", word: "error", background: "statusBarItem.errorBackground" },
  stopped: { icon: "$(circle-slash)", word: "stopped", background: "statusBarItem.warningBackground" },
};

export class StatusBar implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem("status", vscode.StatusBarAlignment.Right, 100);
  private status: ServerStatus = STARTING;
  private readonly disposables: vscode.Disposable[] = [this.item];

  constructor(
    private readonly client: LanguageClient,
    private readonly output: vscode.OutputChannel,
    showOutputCommand: string
  ) {
    this.item.name = "Fimble";
    this.item.command = showOutputCommand;
    this.disposables.push(
      client.onNotification(StatusNotification, (status) => this.show(status)),
      client.onDidChangeState(({ newState }) => {
        if (newState === State.Starting) {
          this.show(STARTING);
        } else if (newState === State.Stopped) {
          this.show({ ...this.status, state: "stopped", problem: "the server is not running" });
        }
      })
    );
    this.show(STARTING);
    this.item.show();
  }

  /** The server could not be started at all. */
  failedToStart(problem: string): void {
    this.show({ ...STARTING, state: "error", model: "not started", problem });
  }

  /** "Fimble: Show Status": the whole state in a message, with the two things one may want next. */
  async showDetails(restartCommand: string): Promise<void> {
    const show = this.status.state === "error" ? vscode.window.showErrorMessage : vscode.window.showInformationMessage;
    const choice = await show(`${describe(this.status)}.`, "Show Log", "Restart Server");
    if (choice === "Show Log") {
      this.output.show(true);
    } else if (choice === "Restart Server") {
      await vscode.commands.executeCommand(restartCommand);
    }
  }

  dispose(): void {
    this.disposables.forEach((d) => d.dispose());
  }

  private show(status: ServerStatus): void {
    const changed = describe(status) !== describe(this.status);
    this.status = status;
    const look = LOOKS[status.state] ?? LOOKS.error;
    this.item.text = `${look.icon} Fimble`;
    this.item.tooltip = `${describe(status)}. Click for the log.`;
    this.item.accessibilityInformation = { label: `Fimble: ${look.word}` };
    this.item.backgroundColor = look.background ? new vscode.ThemeColor(look.background) : undefined;
    if (changed) {
      this.output.appendLine(`[${new Date().toLocaleTimeString()}] ${describe(status)}`);
    }
  }
}

/** "Fimble: ready (model ready, workspace index ready)", or what went wrong. */
export function describe(status: ServerStatus): string {
  const parts = [`model ${status.model}`];
  if (status.index !== "none") {
    parts.push(`workspace index ${status.index}`);
  }
  const problem = status.problem ? `: ${status.problem}` : "";
  return `Fimble ${LOOKS[status.state]?.word ?? status.state}${problem} (${parts.join(", ")})`;
}
