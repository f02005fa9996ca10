"""What one generation request is and what it returns, below every decoding method: the
validated :class:`~tokenloom.request.config.DecodeConfig`, the
:class:`~tokenloom.request.sink.TokenSink` that applies the stop rules and feeds the streamer,
and :class:`~tokenloom.request.stats.GenerateOutput` / ``GenerateStats``. The speculative loop
(:mod:`tokenloom.spec`), the verifiers (:mod:`tokenloom.verify`) and the front end
(:mod:`tokenloom.decoding`) all import from here; this layer imports none of them."""
