// The inline-completion context as LSP 3.18 numbers it. vscode-languageclient 9 forwards VS Code's
// InlineCompletionContext unchanged (codeConverter.asInlineCompletionParams), written for the 3.17
// proposal, while the server speaks LSP 3.18:
// - trigger kinds: VS Code has Invoke = 0 and Automatic = 1, LSP 3.18 Invoked = 1 and Automatic = 2.
//   Unmapped, every keystroke's request would reach the server as Invoked (taken for a key
//   binding: never withheld), and Alt+] (an Invoke) would be refused as an unknown kind;
// - the suggest widget's selected item: a VS Code Range goes out as a JSON array, not an LSP Range.
// vscode-languageclient 10 converts both, but it needs VS Code 1.91 and a log output channel,
// whose timestamped lines the end-to-end tests' readers of the output channel do not parse.
import * as vscode from "vscode";
import { LanguageClient, Middleware } from "vscode-languageclient/node";

const LSP_INVOKED = 1;
const LSP_AUTOMATIC = 2;

export function inlineCompletionMiddleware(client: () => LanguageClient | undefined): Pick<Middleware, "provideInlineCompletionItems"> {
  return {
    provideInlineCompletionItems: (document, position, context, token, next) =>
      next(document, position, asLspContext(context, client()), token),
  };
}

// Handed to the library as a VS Code context, which it sends as it is: hence the casts.
function asLspContext(context: vscode.InlineCompletionContext, client: LanguageClient | undefined): vscode.InlineCompletionContext {
  const triggerKind = context.triggerKind === vscode.InlineCompletionTriggerKind.Invoke ? LSP_INVOKED : LSP_AUTOMATIC;
  const selected = context.selectedCompletionInfo;
  const selectedCompletionInfo = selected && client
    ? { range: client.code2ProtocolConverter.asRange(selected.range), text: selected.text }
    : undefined;
  return {
    triggerKind: triggerKind as unknown as vscode.InlineCompletionTriggerKind,
    selectedCompletionInfo: selectedCompletionInfo as unknown as vscode.SelectedCompletionInfo | undefined,
  };
}
