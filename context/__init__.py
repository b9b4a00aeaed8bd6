"""Repository context: a tree-sitter index of the workspace's definitions, kept current as files
change, and the snippets retrieved from it for a prompt."""
