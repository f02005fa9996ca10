"""Type stubs of the compiled extension ``tokenloom._core`` (hand-written; checked with
``mypy.stubtest``). Arrays are numpy arrays; shapes are given in the docstrings of the Rust
functions and of the Python wrappers."""

from typing import Any, List, Optional, Tuple, final

import numpy as np
import numpy.typing as npt

__version__: str
__all__ = [
    "DraftTree",
    "DynamicTreeBuilder",
    "TokenRecycler",
    "__version__",
    "nested_template_order",
    "probs_from_logits",
    "sample_logits",
    "template_names",
    "template_parents",
    "template_paths",
    "uniforms",
    "verify_chain",
    "verify_chain_batch",
    "verify_greedy",
    "verify_greedy_batch",
    "verify_tree",
    "verify_tree_batch",
]

_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]

# --- verify -------------------------------------------------------------------------------
def verify_greedy(parents: _I64, tokens: _I64, target_argmax: _I64) -> Tuple[_I64, _I64]: ...
def verify_greedy_batch(
    parents: _I64, tokens: _I64, target_argmax: _I64, lengths: _I64
) -> List[Tuple[_I64, _I64]]: ...

# --- dyntree (DySpec) -----------------------------------------------------------------------
@final
class DynamicTreeBuilder:
    def __new__(
        cls,
        budget: int,
        max_depth: int,
        *,
        k: int = 8,
        sampled: bool = False,
        seed: Optional[int] = None,
        vocab_size: Optional[int] = None,
        max_frontier: Optional[int] = None,
    ) -> "DynamicTreeBuilder": ...
    def reset(self, root_token: int) -> None: ...
    def frontier(self) -> Tuple[_I64, _I64, _I64, _I64]: ...
    def expand(self, node_ids: _I64, topk_ids: _I64, topk_probs: _F64) -> None: ...
    def expand_rows(self, node_ids: _I64, probs: _F64) -> None: ...
    def tree(self) -> Tuple[_I64, _I64, _I64, _F64, _I64, _I64]: ...
    def node(self, node_id: int) -> Tuple[int, int, int]: ...
    @property
    def done(self) -> bool: ...
    @property
    def num_nodes(self) -> int: ...
    @property
    def rows_seen(self) -> int: ...
    @property
    def budget(self) -> int: ...
    @property
    def max_depth(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def sampled(self) -> bool: ...
    @property
    def seed(self) -> int: ...
    @property
    def vocab_size(self) -> Optional[int]: ...
    @property
    def max_frontier(self) -> Optional[int]: ...
# --- verify: trees and chains (tokenloom-core verify::{tree, chain}) -----------------------
_F = npt.NDArray[np.floating[Any]]

def verify_tree(
    parents: _I64,
    tokens: _I64,
    target_probs: _F,
    draft_probs: Optional[_F] = None,
    seed: int = 0,
    replacement: bool = True,
) -> Tuple[_I64, _I64]: ...
def verify_tree_batch(
    parents: _I64,
    tokens: _I64,
    target_probs: _F,
    lengths: _I64,
    draft_probs: Optional[_F] = None,
    seed: int = 0,
    replacement: bool = True,
) -> List[Tuple[_I64, _I64]]: ...
def verify_chain(draft_tokens: _I64, draft_probs: _F, target_probs: _F, seed: int = 0) -> Tuple[_I64, _I64]: ...
def verify_chain_batch(
    draft_tokens: _I64, draft_probs: _F, target_probs: _F, lengths: _I64, seed: int = 0
) -> List[Tuple[_I64, _I64]]: ...

# --- sampling (tokenloom-core sampling, rng) -----------------------------------------------
def probs_from_logits(
    logits: _F,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
) -> _F: ...
def sample_logits(
    logits: _F,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
    seed: int = 0,
    counter: int = 0,
    stream0: int = 0,
) -> _I64: ...
def uniforms(
    seed: int, streams: npt.NDArray[np.uint64], counters: npt.NDArray[np.uint64]
) -> npt.NDArray[np.float64]: ...
# --- recycling ----------------------------------------------------------------------------
from os import PathLike
from typing import Optional, Sequence, Union, final

_U32 = npt.NDArray[np.uint32]
_Template = Union[str, Sequence[Sequence[int]]]

@final
class DraftTree:
    @property
    def tokens(self) -> _I64: ...
    @property
    def parents(self) -> _I64: ...
    @property
    def depths(self) -> _I64: ...
    def __len__(self) -> int: ...

@final
class TokenRecycler:
    def __new__(cls, vocab_size: int, k: int = 8, template: Optional[_Template] = None) -> "TokenRecycler": ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def template(self) -> List[List[int]]: ...
    @property
    def tree_size(self) -> int: ...
    def set_template(self, template: _Template) -> None: ...
    def draft(self, root_token: int) -> DraftTree: ...
    def update(self, tokens: _I64, topk_ids: _I64) -> None: ...
    def seed_from_prefill(self, tokens: _I64, topk_ids: _I64) -> None: ...
    def ranks_of(self, tokens: _I64, next_tokens: _I64) -> _I64: ...
    def adjacency(self) -> _U32: ...
    def save(self, path: Union[str, "PathLike[str]"]) -> None: ...
    @staticmethod
    def load(
        path: Union[str, "PathLike[str]"],
        vocab_size: Optional[int] = None,
        k: Optional[int] = None,
        template: Optional[_Template] = None,
    ) -> "TokenRecycler": ...

def template_names() -> List[str]: ...
def template_paths(template: _Template) -> List[List[int]]: ...
def template_parents(template: _Template) -> _I64: ...
def nested_template_order() -> List[List[int]]: ...
