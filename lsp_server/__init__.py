"""The process edges: the `fimble` command line, and (with the LSP issue) the LSP server."""
