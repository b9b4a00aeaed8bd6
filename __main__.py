"""`python -m fimble`: the same as the `fimble` command."""

import sys

from fimble.lsp_server.cli import main

sys.exit(main())
