"""The explicit table of decoding methods behind ``generate(method=...)``.

A method is ``fn(model, input_ids, cfg, sink, **kwargs) -> Optional[SpecStats]``. It is called
even when there is nothing to generate (``max_new_tokens=0``: ``sink.done`` is already True), so
that it checks its arguments every time; it then returns before any forward. Speculative
methods are drafter factories run by the one loop (:func:`tokenloom.spec.loop.speculative_decode`);
:func:`register_method` adds a method or a drafter explicitly (never by import side effect);
:func:`method_scope` makes a table of methods (a benchmark's own drafters) resolvable inside a
``with`` block of one thread or task, without writing the library's table.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

from tokenloom.decoding.cautious import decode_cautious
from tokenloom.decoding.plain import decode_plain
from tokenloom.spec.dyspec.drafter import make_dyspec_drafter
from tokenloom.spec.lookup import make_lookup_drafter
from tokenloom.spec.recycling.method import make_recycling_drafter
from tokenloom.spec.merged.method import make_merged_drafter, make_suffix_drafter

__all__ = [
    "MethodFn", "check_kwargs", "method_scope", "methods", "register_drafter", "register_method", "resolve_method",
    "speculative_method",
]

MethodFn = Callable[..., Any]


def speculative_method(factory: Callable[..., Any]) -> MethodFn:
    """The method running ``factory(model, cfg, next_seed, **kwargs)``'s drafter in the one loop."""

    def method(model: Any, input_ids: Any, cfg: Any, sink: Any, **kwargs: Any) -> Any:
        from tokenloom.spec.loop import speculative_decode

        return speculative_decode(model, input_ids, cfg, sink, lambda m, c, s: factory(m, c, s, **kwargs))

    method.__doc__ = factory.__doc__
    method.__name__ = getattr(factory, "__name__", "speculative_method")
    method.factory = factory  # type: ignore[attr-defined]
    return method


def check_kwargs(name: str, fn: MethodFn, kwargs: Dict[str, Any]) -> None:
    """Refuse keywords the method does not take, before any model work.

    Raises:
        TypeError: an unknown keyword (the message lists the accepted ones).
    """
    import inspect

    target = getattr(fn, "factory", fn)
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise TypeError(f"method {name!r}: unexpected keyword(s) {unknown}; it takes {known}")


_LOCK = threading.Lock()
_METHODS: Dict[str, MethodFn] = {
    "plain": decode_plain,
    "cautious": decode_cautious,
    "recycling": speculative_method(make_recycling_drafter),
    "dyspec": speculative_method(make_dyspec_drafter),
    "lookup": speculative_method(make_lookup_drafter),
    "suffix": speculative_method(make_suffix_drafter),
    "merged": speculative_method(make_merged_drafter),
}
#: Names that cannot be registered again.
BUILTIN = frozenset(_METHODS)
#: Other names for a method (``greedy`` was the first name of plain decoding, which samples
#: at temperature > 0).
ALIASES: Dict[str, str] = {"greedy": "plain"}
#: Methods visible in the current thread / task only (:func:`method_scope`).
_SCOPE: ContextVar[Mapping[str, MethodFn]] = ContextVar("tokenloom_method_scope", default={})


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty str, got {name!r}")
    if name in ALIASES or name in BUILTIN:
        raise ValueError(f"method name {name!r} is built in; choose another name")


def register_method(name: str, fn: Optional[MethodFn] = None) -> Any:
    """Register ``fn(model, input_ids, cfg, sink, **kwargs)`` as ``generate(method=name)``.

    Usable as ``register_method("name", fn)`` or as a decorator ``@register_method("name")``.
    Registering a name again replaces the earlier registration (not a built-in's).

    Raises:
        ValueError: ``name`` is not a non-empty str or is a built-in method or alias.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty str, got {name!r}")

    def add(f: MethodFn) -> MethodFn:
        if not callable(f):
            raise TypeError(f"method: expected a callable, got {type(f).__name__}")
        with _LOCK:
            _check_name(name)
            _METHODS[name] = f
        return f

    return add if fn is None else add(fn)


def register_drafter(name: str, factory: Callable[..., Any]) -> None:
    """Register a drafter ``factory(model, cfg, next_seed, **kwargs) -> Drafter`` as
    ``generate(method=name)``, run by the one speculative loop."""
    register_method(name, speculative_method(factory))


@contextmanager
def method_scope(table: Mapping[str, MethodFn]) -> Iterator[None]:
    """Inside the ``with`` block, and in this thread or task only, ``generate(method=name)``
    also resolves the names of ``table`` (``name -> method``, e.g.
    ``speculative_method(factory)``): a benchmark's own drafters, kept out of the library's
    table (:func:`register_method` writes that one, for every thread). Scopes nest.

    Raises:
        ValueError: a name that is not a non-empty str, or a built-in method or alias.
        TypeError: a method that is not callable.
    """
    for name, fn in table.items():
        _check_name(name)
        if not callable(fn):
            raise TypeError(f"method {name!r}: expected a callable, got {type(fn).__name__}")
    token = _SCOPE.set({**_SCOPE.get(), **table})
    try:
        yield
    finally:
        _SCOPE.reset(token)


def methods() -> List[str]:
    """Names accepted by ``generate(method=...)`` (aliases and the names of an enclosing
    :func:`method_scope` included)."""
    with _LOCK:
        return sorted(set(_METHODS) | set(ALIASES) | set(_SCOPE.get()))


def resolve_method(name: Any) -> MethodFn:
    """The method behind ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if not isinstance(name, str):
        fn = None
    else:
        fn = _SCOPE.get().get(name)
        if fn is None:
            with _LOCK:
                fn = _METHODS.get(ALIASES.get(name, name))
    if fn is None:
        raise ValueError(f"unknown method {name!r}; expected one of {methods()}")
    return fn
