"""The ``suffix`` and ``merged`` chain drafters of the vLLM proposer, without vLLM: chains against
a brute-force reference (pure-Python suffix matching, every path of the candidate tree scored
with the same calibration), per-request state through the proposer under row reordering and
identical histories, requests leaving the batch feeding a bounded cross-request cache, and
the errors for bad options."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from tokenloom.spec.chains import MergedChains, chain_drafters, make_chain_drafter
from tokenloom.integrations.vllm.proposer import MergedProposer, Proposer, SuffixProposer, drafter_options
from tokenloom.spec.merged.drafter import top_path

from tests.reference.suffix import cap_reference
from tests.reference.spec import committed, drive_reordered

V = 40


def _config(num_tokens=3, vocab=V):
    model_config = types.SimpleNamespace(max_model_len=128, get_vocab_size=lambda: vocab)
    return types.SimpleNamespace(model_config=model_config, speculative_config=types.SimpleNamespace(num_speculative_tokens=num_tokens))


# --- brute-force reference -------------------------------------------------------------------


def _count(seqs, s):
    n = len(s)
    return sum(1 for q in seqs for i in range(len(q) - n + 1) if q[i : i + n] == s)


def _continuations(seqs, ctx, max_match, depth_cap, max_depth):
    """(match length, {path: (P(last | path[:-1]), support)}) of the longest suffix of ``ctx``
    that occurs in ``seqs`` with a continuation, paths up to ``max_depth`` tokens."""
    top = min(max_match, len(ctx), depth_cap - 1)
    alphabet = sorted({t for q in seqs for t in q})

    def kids(s):
        if len(s) + 1 > depth_cap:
            return {}
        out = {x: _count(seqs, s + [x]) for x in alphabet}
        return {x: c for x, c in out.items() if c > 0}

    for m in range(top, 0, -1):
        pat = list(ctx[-m:])
        if kids(pat):
            break
    else:
        return 0, {}
    nodes = {}
    stack = [()]
    while stack:
        path = stack.pop()
        if len(path) >= max_depth:
            continue
        k = kids(pat + list(path))
        total = sum(k.values())
        for x, c in k.items():
            nodes[path + (x,)] = (c / total, total)
            stack.append(path + (x,))
    return m, nodes


def _reference_best(d: MergedChains, history, cache_seqs):
    """The best gain (expected accepted tokens) over every path of the candidate tree and the
    set of shortest paths reaching it."""
    cal = d.calibration
    est = cal.estimates()
    n = d.num_tokens
    ctx = list(history[-d.max_match :])
    sources = [(0, _continuations([list(history)], ctx, d.max_match, d.index_depth, n))]
    if d.cache is not None and cache_seqs:
        sources.append((1, _continuations([list(q) for q in cache_seqs], ctx, d.max_match, d.index_depth, n)))
    rec = d.recycling.recycler if d.recycling is not None else None

    def row(path, token):
        depth = len(path)
        suffix = {}
        for src, (m, nodes) in sources:
            for p, (q, sup) in nodes.items():
                if len(p) == depth + 1 and p[:-1] == path:
                    suffix.setdefault(p[-1], []).append(cal.suffix_class(src, m + depth, q, sup))
        in_trie = depth == 0 or any(path in nodes for _, (_, nodes) in sources)
        recycled = []
        if rec is not None:
            r = rec.rows(np.array([token]))[0].tolist()
            if any(r):
                seen = set()
                for rank, t in enumerate(r):
                    if t not in seen:
                        seen.add(t)
                        recycled.append((t, cal.recycle_class(rank, depth)))
        if in_trie and suffix:
            cand = {t: list(c) for t, c in suffix.items()}
            for t, c in recycled:
                cand.setdefault(t, []).append(c)
            probs = {t: 1.0 - float(np.prod([1.0 - est[c] for c in cl])) for t, cl in cand.items()}
        else:
            probs = {t: float(est[c]) for t, c in recycled}
        probs = dict(zip(probs, cap_reference(list(probs.values()))))
        return {t: p for t, p in probs.items() if p > 0.0}

    cost = d.token_cost
    best, paths = 0.0, [()]
    stack = [((), int(history[-1]), 1.0, 0.0)]
    while stack:
        path, token, score, gain = stack.pop()
        if len(path) >= n:
            continue
        for t, p in row(path, token).items():
            s, g = score * p, gain + score * p - cost
            child = path + (t,)
            if g > best + 1e-12 or (abs(g - best) <= 1e-12 and len(child) < len(paths[0])):
                best, paths = g, [child]
            elif abs(g - best) <= 1e-12 and len(child) == len(paths[0]):
                paths.append(child)
            stack.append((child, t, s, g))
    return best, paths


def test_top_path_is_the_best_chain():
    rng = np.random.default_rng(1)
    for _ in range(200):
        t = int(rng.integers(1, 12))
        parents = np.array([-1] + [int(rng.integers(0, i)) for i in range(1, t)], dtype=np.int64)
        scores = np.zeros(t)
        for i in range(1, t):
            scores[i] = (scores[parents[i]] if parents[i] else 1.0) * float(rng.choice([0.0, 0.25, 0.5, 1.0]))
        path = top_path(scores, parents)

        def nodes(i):
            out = [i]
            while out[-1] != 0:
                out.append(int(parents[out[-1]]))
            return out[::-1]

        gains = [sum(scores[j] for j in nodes(i)[1:]) for i in range(t)]
        best = max(gains)
        assert path[0] == 0 and all(parents[path[j]] == path[j - 1] for j in range(1, len(path)))
        assert abs(sum(scores[path[1:]]) - best) < 1e-12
        assert len(path) == min(len(nodes(i)) for i in range(t) if abs(gains[i] - best) < 1e-12)


@pytest.mark.parametrize("name,token_cost", [("suffix", 0.0), ("merged", 0.0), ("suffix", 0.3), ("merged", 0.25)])
def test_chains_match_brute_force_reference(name, token_cost):
    """Random small-alphabet requests, a noisy periodic target; every step's chain is one of the
    reference's best paths (ties: the shortest), the calibration and the cache learning as the
    requests go on."""
    rng = np.random.default_rng(7 if name == "suffix" else 8)
    options = {"k": 3} if name == "merged" else {}
    d = make_chain_drafter(name, V, 4, budget=400, token_cost=token_cost, **options)
    checked = 0
    for req in range(4):
        period = rng.integers(0, 4, int(rng.integers(2, 5))).tolist()
        history = rng.integers(0, 4, int(rng.integers(3, 10))).tolist()
        state = d.start(np.array(history))
        for step in range(12):
            cache_seqs = d.cache.sequences() if d.cache is not None else []
            best, paths = _reference_best(d, history, cache_seqs)
            chain = d.propose(np.array(history), 4, state)
            if paths == [()]:
                assert chain == []
            else:
                assert tuple(chain) in paths, (req, step, chain, paths, best)
                checked += 1
            truth = [period[(len(history) + j) % len(period)] if rng.random() > 0.15 else int(rng.integers(0, 4))
                     for j in range(5)]
            emitted = committed(chain, truth)
            d.observe(np.array([history[-1]] + chain), np.array(emitted), None, state)
            history += emitted
        d.finish(state)
    assert checked > 20
    assert len(d.cache) == 4


def test_proposer_suffix_merged_state_across_row_reordering(monkeypatch):
    """Three requests through the proposer, rows reordered every step, one request leaving: the
    suffix drafter learns each request's period from its own history only, the request that
    left ends its state (its output joins the cache), identical histories each keep their own
    state, and only live requests keep state."""
    mod = types.ModuleType("vllm")
    mod.__version__ = "0.32.0"
    monkeypatch.setitem(sys.modules, "vllm", mod)
    for var in ("TOKENLOOM_VLLM_DRAFTER", "TOKENLOOM_VLLM_UPDATE", "TOKENLOOM_VLLM_STATS", "TOKENLOOM_VLLM_OPTIONS"):
        monkeypatch.delenv(var, raising=False)
    for cls in (SuffixProposer, MergedProposer):
        p = cls(_config(num_tokens=3))
        seqs = {"a": [1, 2, 3, 4] * 2, "b": [10, 11, 12] * 2, "c": [20, 21, 22] * 2, "d": [1, 2, 3, 4] * 2}
        period = {"a": [1, 2, 3, 4], "b": [10, 11, 12], "c": [20, 21, 22], "d": [1, 2, 3, 4]}
        orders = [["a", "d", "b"] if step % 2 else ["b", "d", "a"] for step in range(10)]
        for step in range(5):
            orders[step].insert(1, "c")

        def rows_follow_the_batch(order):
            assert sum(len(v) for v in p._rows.values()) == len(order)

        proposals = drive_reordered(p, seqs, period, orders, {4: "c"}, rows_follow_the_batch)
        s = p.stats()
        assert s["unmatched_rows"] == 0 and s["new_rows"] == 4 and s["finished_requests"] == 1, s
        assert s["drafter_stats"]["resynced"] == 0 and s["drafter_stats"]["finished"] == 1
        assert p.drafter.cache.sequences()[0].tolist()[-3:] == seqs["c"][-3:]
        for r in ("a", "b", "d"):
            n = len(seqs[r])
            assert proposals[r] == [period[r][(n + j) % len(period[r])] for j in range(3)], (cls.__name__, r)
        assert seqs["a"] == seqs["d"]


def test_cache_is_bounded():
    d = make_chain_drafter("suffix", V, 3, cache_requests=3, cache_bytes=8192)
    rng = np.random.default_rng(3)
    for _ in range(20):
        h = rng.integers(0, V, 10).tolist()
        state = d.start(np.array(h))
        while len(h) < 40:
            chain = d.propose(np.array(h), 3, state)
            emitted = committed(chain, rng.integers(0, V, 4).tolist())
            d.observe(np.array(h[-1:] + chain), np.array(emitted), None, state)
            h += emitted
        d.finish(state)
        assert len(d.cache) <= 3 and d.cache.memory_bytes <= 8192
    assert d.stats()["cache"]["evicted"] > 0
    assert make_chain_drafter("merged", V, 3, cache=False).cache is None


def test_bad_options_are_clear_errors(monkeypatch):
    assert {"recycling", "suffix", "merged"} <= set(chain_drafters())
    with pytest.raises(ValueError, match=r"unknown chain drafter 'sufix'.*merged.*suffix"):
        make_chain_drafter("sufix", V, 3)
    with pytest.raises(ValueError, match=r"'suffix': unknown options \['k'\]; expected some of \[.*cache_bytes"):
        make_chain_drafter("suffix", V, 3, k=4)
    with pytest.raises(ValueError, match=r"'merged': unknown options \['recycled'\]"):
        make_chain_drafter("merged", V, 3, recycled=False)
    with pytest.raises(ValueError, match=r"'recycling': unknown options \['budget'\]"):
        make_chain_drafter("recycling", V, 3, budget=4)
    with pytest.raises(ValueError, match="budget"):
        make_chain_drafter("merged", V, 3, budget=0)
    for bad in (-0.1, 1.5, "0.2", True):
        with pytest.raises(ValueError, match="token_cost"):
            make_chain_drafter("merged", V, 3, token_cost=bad)
    with pytest.raises(ValueError, match="cache_bytes"):
        make_chain_drafter("suffix", V, 3, cache_bytes=0)
    with pytest.raises(TypeError, match="cache"):
        make_chain_drafter("suffix", V, 3, cache="big")
    d = make_chain_drafter("suffix", V, 3)
    with pytest.raises(ValueError, match="emitted"):
        d.observe(np.array([1]), np.array([2, 3]), None, d.start(np.array([1])))
    assert drafter_options('{"budget": 8}') == {"budget": 8} and drafter_options(" ") == {}
    for text in ("budget=8", "[1]"):
        with pytest.raises(ValueError, match="TOKENLOOM_VLLM_OPTIONS"):
            drafter_options(text)
    mod = types.ModuleType("vllm")
    mod.__version__ = "0.32.0"
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.delenv("TOKENLOOM_VLLM_DRAFTER", raising=False)
    monkeypatch.delenv("TOKENLOOM_VLLM_UPDATE", raising=False)
    monkeypatch.setenv("TOKENLOOM_VLLM_OPTIONS", '{"budget": 8, "cache_requests": 2}')
    p = Proposer(_config())
    assert p.drafter.name == "merged" and p.drafter.budget == 8  # the default drafter and p.drafter.cache.max_requests == 2
    monkeypatch.setenv("TOKENLOOM_VLLM_OPTIONS", '{"nope": 1}')
    with pytest.raises(ValueError, match=r"unknown options \['nope'\]"):
        Proposer(_config())


def test_old_module_paths_warn_and_still_work():
    """``tokenloom.integrations.vllm.chains`` moved to ``tokenloom.spec.chains`` and the merged
    drafter's modules from ``tokenloom.spec.suffix`` to ``tokenloom.spec.merged``: the old
    names import, with a DeprecationWarning, and give the same objects."""
    import importlib

    from tokenloom.spec import chains
    from tokenloom.spec.merged import calibration, drafter, method

    for old, new, names in (
        ("tokenloom.integrations.vllm.chains", chains, ["RecyclingChains", "MergedChains", "ChainDrafter",
                                                        "CHAIN_DRAFTERS", "register_chain_drafter", "make_chain_drafter"]),
        ("tokenloom.spec.suffix.drafter", drafter, ["MergedDrafter", "top_path", "cap_rows"]),
        ("tokenloom.spec.suffix.method", method, ["make_merged_drafter", "make_suffix_drafter"]),
        ("tokenloom.spec.suffix.calibration", calibration, ["Calibration"]),
    ):
        mod = importlib.import_module(old)
        for name in names:
            with pytest.warns(DeprecationWarning, match=f"{old} moved to {new.__name__}"):
                assert getattr(mod, name) is getattr(new, name)
    from tokenloom.integrations.vllm import make_chain_drafter as adapter_name  # the adapter's re-export

    assert adapter_name is chains.make_chain_drafter
