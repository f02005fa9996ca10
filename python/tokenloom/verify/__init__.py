"""Lossless verification: the Rust kernels (:mod:`.kernels`), their device mirror for tensors on
an accelerator (:mod:`.device`) and the policy choosing one per decoding step (:mod:`.policy`)."""
