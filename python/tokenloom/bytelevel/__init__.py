"""Exact byte-level probabilities from token-level models: the byte vocabulary (:mod:`.vocab`),
the byte LM (:mod:`.lm`) and ensembles (:mod:`.ensemble`)."""
