"""The tree-sitter index of the workspace that feeds repository context into prompts (see the context issue)."""
