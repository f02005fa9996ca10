"""The names of the linear kernels a model's CPU linears can run with (torch-free, so that
``import tokenloom`` works without torch; the kernels themselves live in :mod:`.cpupack`)."""

from __future__ import annotations

from typing import Dict, Union

__all__ = ["PACK_KERNELS", "TREE_KERNELS"]

#: The kernel names a linear can run with, by the ``pack`` value that selects each:
#: ``"unpacked"`` (False: the model as loaded), ``"packed"`` (True: oneDNN; float32 weights,
#: and bfloat16 ones where oneDNN runs them natively), ``"tiles"`` (``"tiles"``: :class:`tokenloom.runtime.cpupack.TiledLinear`, float32 or bfloat16
#: weights). ``"packed-trees"`` / ``"tiles-trees"``: that kernel for inputs of 2 rows or more
#: (tree steps, prefills) and the original ``nn.Linear`` for one row
#: (:class:`tokenloom.runtime.cpupack.TreeRowsLinear`), for machines where a kernel makes trees
#: cheap but loses the one-token step (measured: bfloat16 on an AVX2 CPU, whose as-loaded
#: one-token step is fast and its 17-token step ~8x that).
PACK_KERNELS: Dict[str, Union[bool, str]] = {
    "unpacked": False, "packed": True, "tiles": "tiles", "packed-trees": "packed-trees", "tiles-trees": "tiles-trees",
}
#: The row-split kernels and the kernel each runs for 2 rows or more.
TREE_KERNELS: Dict[str, str] = {"packed-trees": "packed", "tiles-trees": "tiles"}
