"""Sampling transforms and the seeded sampler (:mod:`.sampler`), their torch mirror for tensors on
an accelerator (:mod:`.torch_ops`), seed handling (:mod:`.seeds`) and the best ids of logit rows
(:mod:`.topk`: the top-k a Token Recycling row keeps, the greedy argmax)."""
