// Starts `fimble lsp` over stdio and lets vscode-languageclient wire its inline completions into
// VS Code's ghost text. The chat panel (chat/controller.ts) talks to the same server.
import * as vscode from "vscode";
import { ChatController } from "./chat/controller";
import {
  DidChangeConfigurationNotification,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
} from "vscode-languageclient/node";

const SERVER_SETTINGS = ["enable", "multiLine", "abstainBelowLogprob", "maxDebounceMs"];

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
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: serverSettings(),
  };
  client = new LanguageClient("fimble", "Fimble", serverOptions, clientOptions);
  // In vscode-languageclient 9, textDocument/inlineCompletion (LSP 3.18) is a proposed feature:
  // this registers a VS Code InlineCompletionItemProvider that forwards to the server.
  client.registerProposedFeatures();

  const chat = new ChatController(context.extensionUri, client);
  context.subscriptions.push(
    chat,
    vscode.commands.registerCommand("fimble.chat.open", () => chat.open()),
    vscode.commands.registerCommand("fimble.chat.askAboutSelection", () => chat.askAboutSelection())
  );

  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (event.affectsConfiguration("fimble") && client?.isRunning()) {
        client.sendNotification(DidChangeConfigurationNotification.type, { settings: serverSettings() });
      }
    })
  );

  try {
    await client.start();
  } catch (error) {
    vscode.window.showErrorMessage(
      `Fimble: could not start "${command} lsp" (${error}). Install fimble with pip, or set fimble.serverPath to its full path.`
    );
  }
}

export async function deactivate(): Promise<void> {
  await client?.stop();
}
