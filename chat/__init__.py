"""Chat sessions, the chat prompt and streaming (see the chat issue)."""
