"""The ``hf-varinit`` command line: one module per subcommand; nothing in the library imports this package."""

from hf_varinit.cli.main import main

__all__ = ["main"]
