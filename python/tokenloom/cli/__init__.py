"""The ``tokenloom`` command line: :mod:`.main` builds the parser from one module per subcommand."""
