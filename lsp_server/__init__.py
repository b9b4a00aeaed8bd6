"""The process edges: the `fimble` command line and the LSP server that editors start."""
