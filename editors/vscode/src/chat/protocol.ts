// The chat messages between the extension and `fimble lsp` (docs/chat-protocol.md). Positions and
// ranges are LSP ones (UTF-16, 0-based); paths travel as uris.
import { NotificationType, RequestType } from "vscode-languageclient/node";

export interface Position {
  line: number;
  character: number;
}

export interface Range {
  start: Position;
  end: Position;
}

export type Attachment =
  | { kind: "selection"; uri: string; range: Range }
  | { kind: "file"; uri: string }
  | { kind: "symbol"; name: string };

export interface ChatParams {
  sessionId?: string | null;
  message: string;
  attachments?: Attachment[];
  maxTokens?: number; // absent: the server's default
}

export type FinishReason = "stop" | "length" | "cancelled" | "error";

export interface ChatResult {
  sessionId: string;
  messageIndex: number;
  text: string;
  finishReason: FinishReason;
  droppedTurns: number;
  notice: string;
}

export interface ChatChunk {
  sessionId: string;
  messageIndex: number;
  text: string;
}

export interface OpenChatParams {
  prompt: string;
  attachments?: Attachment[];
}

export interface SessionSummary {
  id: string;
  title: string;
  updated: string | number;
  messages: number;
}

export interface SessionMessage {
  role: "user" | "assistant" | string;
  content: string;
  finishReason?: FinishReason | null;
}

export interface Session {
  id: string;
  title: string;
  messages: SessionMessage[];
}

export type SessionsParams =
  | { action: "list" }
  | { action: "get"; sessionId: string }
  | { action: "delete"; sessionId: string };

export interface ApplyCodeBlockArgs {
  uri: string;
  code: string;
  range: Range;
}

export interface ApplyCodeBlockResult {
  applied: boolean;
  reason?: string;
}

export const ChatRequest = new RequestType<ChatParams, ChatResult, void>("fimble/chat");
export const ChatCancelRequest = new RequestType<{ sessionId: string }, null, void>("fimble/chatCancel");
export const ChatSessionsRequest = new RequestType<SessionsParams, unknown, void>("fimble/chatSessions");
export const ChatChunkNotification = new NotificationType<ChatChunk>("fimble/chatChunk");
export const OpenChatNotification = new NotificationType<OpenChatParams>("fimble/openChat");
export const APPLY_CODE_BLOCK_COMMAND = "fimble.applyCodeBlock";
