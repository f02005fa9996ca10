"""The ``tokenloom`` command line: :mod:`.main` builds the parser from one module per subcommand;
:mod:`.common` has what they share (checking argument types, quiet model loading, exit codes)
and the steps to add a subcommand."""
