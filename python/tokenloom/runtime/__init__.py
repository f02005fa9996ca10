"""Running a Hugging Face model for tokenloom: tree attention (:mod:`.treeattn`), KV-cache
operations (:mod:`.kvcache`), pre-packed CPU linears (:mod:`.cpupack`), model facts
(:mod:`.model`), machine facts (:mod:`.machine`), early exit (:mod:`.earlyexit`) and slot-tree
forwards (:mod:`.slots`); the linear kernels' names (:mod:`.kernels`)."""
