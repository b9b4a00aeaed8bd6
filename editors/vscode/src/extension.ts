// Starts `fimble lsp` over stdio and lets vscode-languageclient wire its inline completions into
// VS Code's ghost text. The chat panel (chat/controller.ts) talks to the same server, and the status
// bar item (status.ts) shows what the server says about its model and index.
import * as vscode from "vscode";
import { ChatController } from "./chat/controller";
import { inlineCompletionMiddleware } from "./inlineContext";
import { StatusBar } from "./status";
import {
  DidChangeConfigurationNotification,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
} from "vscode-languageclient/node";

const SERVER_SETTINGS = ["enable", "multiLine", "abstainBelowLogprob", "maxDebounceMs", "cacheSuggestions", "prefetch", "maxLatencyMs", "candidates"];
const SHOW_OUTPUT_COMMAND = "fimble.showOutput";
const RESTART_COMMAND = "fimble.restartServer";

let client: LanguageClient | undefined;

// The settings the server reads. A null value is left out so that the server uses its default;
// serverPath is not sent (the server warns about keys it does not know).
function serverSettings(): Record<string, unknown> {
  const config = vscode.workspace.getConfiguration("fimble");
  const settings: Record<string, unknown> = {};
  for (const key of SERVER_SETTINGS) {
    const value = config.get(key);
    if (value !== null && value !== undefined) {
      settings[key] = value;
    }
  }
  return settings;
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const command = vscode.workspace.getConfiguration("fimble").get<string>("serverPath") || "fimble";
  const serverOptions: ServerOptions = { command, args: ["lsp"] };
  const output = vscode.window.createOutputChannel("Fimble");
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    // Read at every start, so that a restarted server gets the current settings.
    initializationOptions: () => serverSettings(),
    outputChannel: output,
    middleware: inlineCompletionMiddleware(() => client),
  };
  const started = new LanguageClient("fimble", "Fimble", serverOptions, clientOptions);
  client = started;
  // In vscode-languageclient 9, textDocument/inlineCompletion (LSP 3.18) is a proposed feature:
  // this registers a VS Code InlineCompletionItemProvider that forwards to the server.
  started.registerProposedFeatures();

  const status = new StatusBar(started, output, SHOW_OUTPUT_COMMAND);
  const chat = new ChatController(context.extensionUri, started);
  context.subscriptions.push(
    output,
    status,
    chat,
    vscode.commands.registerCommand("fimble.chat.open", () => chat.open()),
    vscode.commands.registerCommand("fimble.chat.askAboutSelection", () => chat.askAboutSelection()),
    vscode.commands.registerCommand(SHOW_OUTPUT_COMMAND, () => output.show(true)),
    vscode.commands.registerCommand("fimble.showStatus", () => status.showDetails(RESTART_COMMAND)),
    vscode.commands.registerCommand(RESTART_COMMAND, () => restartServer(started, command, output, status))
  );

  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (event.affectsConfiguration("fimble") && started.isRunning()) {
        started.sendNotification(DidChangeConfigurationNotification.type, { settings: serverSettings() });
      }
    })
  );

  await startServer(started, command, output, status);
}

async function startServer(client: LanguageClient, command: string, output: vscode.OutputChannel, status: StatusBar): Promise<void> {
  output.appendLine(`Starting "${command} lsp"`);
  try {
    await client.start();
    output.appendLine(`"${command} lsp" is running`);
  } catch (error) {
    const problem = `could not start "${command} lsp" (${error})`;
    status.failedToStart(problem);
    vscode.window.showErrorMessage(
      `Fimble: ${problem}. Install fimble with pip, or set fimble.serverPath to its full path.`
    );
  }
}

/** "Fimble: Restart Server": a new `fimble lsp`, which finds the daemon (or starts a new one). */
async function restartServer(client: LanguageClient, command: string, output: vscode.OutputChannel, status: StatusBar): Promise<void> {
  if (client.needsStop()) {
    output.appendLine(`Stopping "${command} lsp"`);
    await client.stop();
  }
  await startServer(client, command, output, status);
}

export async function deactivate(): Promise<void> {
  await client?.stop();
}
