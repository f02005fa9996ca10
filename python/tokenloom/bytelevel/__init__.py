"""Exact byte-level probabilities from token-level models.

Modules, by concern:

- :mod:`.vocab`: ``ByteVocab``, the exact bytes of every token and the Rust byte index;
- :mod:`.lm`: ``ByteLM``, the public facade (next-byte distributions, log-probabilities,
  byte-level generation);
- :mod:`.engine`: ``CoverEngine``, the expansion engine behind it (batched forwards, priming);
- :mod:`.covers`: ``CoverState``, the Rust cover tree of one prefix plus per-node bookkeeping
  and the byte-mass sums;
- :mod:`.slots`: ``KVSlots``, the KV cache as tree slots, on :mod:`tokenloom.runtime.treeattn`
  and :mod:`tokenloom.runtime.kvcache`;
- :mod:`.rows`: ``HostRows`` / ``DeviceRows``, where the token distributions live (numpy on
  the host, tensors on an accelerator) and the few numbers the covers read off them;
- :mod:`.distcache`: ``DistCache``, the LRU-bounded token-prefix -> distribution cache and its
  interning;
- :mod:`.lookahead`: ``LookaheadPlanner``, the exact look-ahead rows;
- :mod:`.budget`: ``MemoryBudget`` and ``MemoryBoundError``, the memory bound;
- :mod:`.ensemble`: ``ByteEnsemble``, ensembles of ByteLMs with different vocabularies.
"""
