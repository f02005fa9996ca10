"""The names of the linear kernels a model's CPU linears can run with (torch-free, so that
``import tokenloom`` works without torch; the kernels themselves live in :mod:`.cpupack`)."""

from __future__ import annotations

from typing import Dict, Tuple, Union

__all__ = ["ONE_ROW_KERNELS", "PACK_KERNELS", "TREE_KERNELS", "kernel_parts"]

#: The kernel names a linear can run with, by the ``pack`` value that selects each:
#: ``"unpacked"`` (False: the model as loaded), ``"packed"`` (True: oneDNN; float32 weights,
#: and bfloat16 ones where oneDNN runs them natively), ``"tiles"`` (``"tiles"``: :class:`tokenloom.runtime.cpupack.TiledLinear`, float32 or bfloat16
#: weights). ``"packed-trees"`` / ``"tiles-trees"``: that kernel for inputs of 2 rows or more
#: (tree steps, prefills) and the original ``nn.Linear`` for one row
#: (:class:`tokenloom.runtime.cpupack.TreeRowsLinear`), for machines where a kernel makes trees
#: cheap but loses the one-token step (measured: bfloat16 on an AVX2 CPU, whose as-loaded
#: one-token step is fast and its 17-token step ~8x that). ``"tiles-packed"``: tiles for one
#: row, oneDNN for 2 rows or more (measured: bfloat16 on an AMX CPU, where tiles streams one
#: row's weights fastest and oneDNN's AMX kernel computes tree rows fastest; it keeps both
#: packed copies of the weights).
PACK_KERNELS: Dict[str, Union[bool, str]] = {
    "unpacked": False, "packed": True, "tiles": "tiles", "packed-trees": "packed-trees", "tiles-trees": "tiles-trees",
    "tiles-packed": "tiles-packed",
}
#: The row-split kernels and the kernel each runs for 2 rows or more.
TREE_KERNELS: Dict[str, str] = {"packed-trees": "packed", "tiles-trees": "tiles", "tiles-packed": "packed"}
#: The row-split kernels and the kernel each runs for one row (``"unpacked"``: the original
#: ``nn.Linear``).
ONE_ROW_KERNELS: Dict[str, str] = {"packed-trees": "unpacked", "tiles-trees": "unpacked", "tiles-packed": "tiles"}


def kernel_parts(kernel: str) -> Tuple[str, str]:
    """(the kernel one-row inputs run with, the kernel inputs of 2 rows or more run with)."""
    return ONE_ROW_KERNELS.get(kernel, kernel), TREE_KERNELS.get(kernel, kernel)
