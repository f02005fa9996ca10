"""Decoding front end: :func:`generate`, the request config, the token sink and statistics, and
the explicit table of methods (plain decoding here; speculative methods in :mod:`tokenloom.spec`)."""
