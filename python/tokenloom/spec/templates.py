"""Static tree templates: a template is a set of *rank paths*; node ``(r1, ..., rm)`` is the
``rm``-th candidate below node ``(r1, ..., r(m-1))``. Built in: ``"2.2.2"`` (Token Recycling's
80-node tree, 81 tokens with the root) and the nested ``"2.2.2-N"`` for N in
:data:`NESTED_SIZES` (each a subtree-closed subset of every larger one). A list of rank paths such
as ``[[0], [1], [0, 0]]`` works everywhere a name does. Validation lives in Rust
(``tokenloom._core.Template``)."""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple, Union

import numpy as np

from tokenloom import _core

__all__ = [
    "NESTED_SIZES",
    "Template",
    "TemplateSpec",
    "chain_paths",
    "compile_template",
    "nested_template_order",
    "template_names",
    "template_parents",
    "template_paths",
]

Template = _core.Template
TemplateSpec = Union[str, Sequence[Sequence[int]]]

#: Sizes (draft nodes, root excluded) of the nested templates ``"2.2.2-N"``.
NESTED_SIZES: Tuple[int, ...] = (1, 4, 8, 16, 24, 32, 48, 64, 80)


def template_arg(template: Any) -> Any:
    """``template`` as ``_core`` takes it: a str, or rank paths as ``list[list[int]]``.

    Raises:
        TypeError: not a name nor a list of integer rank paths (floats are refused, not truncated).
    """
    if isinstance(template, str):
        return template
    try:
        ok = all(
            isinstance(r, (int, np.integer)) and not isinstance(r, bool) for path in template for r in path
        )
        if ok:
            return [[int(r) for r in path] for path in template]
    except TypeError:
        pass
    raise TypeError(
        f"template: expected a name (one of {template_names()}) or a list of rank paths "
        f"(list[list[int]]), got {template!r}"
    )


def compile_template(template: Union[TemplateSpec, "Template"]) -> "Template":
    """A validated, compiled :class:`Template` (returned as is when it already is one).

    Raises:
        ValueError: empty, duplicate, negative, not subtree-closed paths or an unknown name.
        TypeError: neither a name nor rank paths.
    """
    if isinstance(template, Template):
        return template
    return Template(template_arg(template))


def template_names() -> List[str]:
    """Names of the built-in templates: ``"2.2.2"`` and ``"2.2.2-N"``."""
    return list(_core.template_names())


def template_paths(template: TemplateSpec) -> List[List[int]]:
    """Validated rank paths of ``template`` in canonical order (node ``i + 1`` is path ``i``).

    Raises:
        ValueError: empty, duplicate, negative, not subtree-closed, or unknown name.
    """
    return [list(p) for p in _core.template_paths(template_arg(template))]


def template_parents(template: TemplateSpec) -> np.ndarray:
    """Parent array int64 [T] of the template's tree (root included)."""
    return _core.template_parents(template_arg(template))


def nested_template_order() -> List[List[int]]:
    """The 80 paths of "2.2.2" in nested order: ``"2.2.2-N"`` is the first N of them."""
    return [list(p) for p in _core.nested_template_order()]


def chain_paths(depth: int) -> List[List[int]]:
    """A chain of ``depth`` rank-0 nodes: ``[[0], [0, 0], ...]``."""
    return [[0] * d for d in range(1, depth + 1)]
