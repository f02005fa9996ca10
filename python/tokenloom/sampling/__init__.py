"""Sampling transforms and the seeded sampler (:mod:`.sampler`), their torch mirror for tensors on
an accelerator (:mod:`.torch_ops`) and seed handling (:mod:`.seeds`)."""
