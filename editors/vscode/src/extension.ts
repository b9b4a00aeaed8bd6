// Starts `fimble lsp` over stdio and lets vscode-languageclient wire its inline completions into
// VS Code's ghost text.
import * as vscode from "vscode";
import { LanguageClient, LanguageClientOptions, ServerOptions } from "vscode-languageclient/node";

let client: LanguageClient | undefined;

// The settings the server reads, as a plain object (WorkspaceConfiguration also carries methods).
function serverSettings(): Record<string, unknown> {
  const config = vscode.workspace.getConfiguration("fimble");
  return {
    enable: config.get<boolean>("enable"),
    multiLine: config.get<boolean>("multiLine"),
    abstainBelowLogprob: config.get<number | null>("abstainBelowLogprob"),
    maxDebounceMs: config.get<number>("maxDebounceMs"),
  };
}

export async function activate(_context: vscode.ExtensionContext): Promise<void> {
  const command = vscode.workspace.getConfiguration("fimble").get<string>("serverPath") || "fimble";
  const serverOptions: ServerOptions = { command, args: ["lsp"] };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: serverSettings(),
    // Sends workspace/didChangeConfiguration with {settings: {fimble: {...}}} now and on every change.
    synchronize: { configurationSection: "fimble" },
  };
  client = new LanguageClient("fimble", "Fimble", serverOptions, clientOptions);
  // In vscode-languageclient 9, textDocument/inlineCompletion (LSP 3.18) is a proposed feature:
  // this registers a VS Code InlineCompletionItemProvider that forwards to the server.
  client.registerProposedFeatures();
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
