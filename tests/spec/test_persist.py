"""Persisted drafter state (tokenloom.spec.persist) and Token Recycling's matrix carried across
processes through it: round trip, corrupted / wrong-version / foreign files (one warning, cold
start), the opt-outs, atomic replace under concurrent writers, and a second process that starts
hot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

import tokenloom
from tokenloom.spec import persist
from tokenloom.spec.persist import PersistWarning, StateSaver, load_object, load_state, save_state, state_path
from tokenloom.spec.recycling.recycler import (
    STATE_VERSION,
    TokenRecycler,
    default_recycler,
    recycler_changed,
    reset_default_recyclers,
    state_name,
)

ROOT = Path(__file__).resolve().parents[2]
#: The folder holding the tokenloom this test imports (python/ in a checkout, site-packages when
#: the wheel is installed), for the subprocesses.
SRC = str(Path(tokenloom.__file__).resolve().parents[1])
KEY = "0123456789abcdef01234567"


def _caught(fn, *args):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn(*args)
    return out, [x for x in w if issubclass(x.category, PersistWarning)]


def test_cache_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENLOOM_CACHE_DIR", str(tmp_path / "a"))
    assert persist.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("TOKENLOOM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert persist.cache_dir() == tmp_path / "xdg" / "tokenloom"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert persist.cache_dir() == tmp_path / "home" / ".cache" / "tokenloom"


def test_round_trip_and_absent(_private_cache_dir):
    assert load_state(KEY, "thing", 3) is None  # no file: cold start, no warning
    payload = bytes(range(256)) * 10
    save_state(KEY, "thing", 3, payload)
    assert state_path(KEY, "thing").parent == _private_cache_dir / "state"
    got, warned = _caught(load_state, KEY, "thing", 3)
    assert got == payload and not warned
    save_state(KEY, "thing", 3, b"")
    assert load_state(KEY, "thing", 3) == b""
    assert not list(state_path(KEY, "thing").parent.glob("*.tmp")), "no temporary file left"


@pytest.mark.parametrize(
    "damage",
    ["flip_payload", "truncate", "pad", "bad_magic", "empty", "header_only"],
)
def test_corrupted_file_warns_once_and_starts_cold(damage):
    name = f"c-{damage}"
    save_state(KEY, name, 1, b"hello state" * 100)
    path = state_path(KEY, name)
    data = bytearray(path.read_bytes())
    if damage == "flip_payload":
        data[-5] ^= 0xFF
    elif damage == "truncate":
        data = data[:-3]
    elif damage == "pad":
        data += b"\0"
    elif damage == "bad_magic":
        data[0] ^= 1
    elif damage == "empty":
        data = bytearray()
    elif damage == "header_only":
        data = data[:20]
    path.write_bytes(bytes(data))
    got, warned = _caught(load_state, KEY, name, 1)
    assert got is None and len(warned) == 1
    assert str(path) in str(warned[0].message) and "starting cold" in str(warned[0].message)
    got, warned = _caught(load_state, KEY, name, 1)
    assert got is None and not warned, "one warning per file and process"
    save_state(KEY, name, 1, b"fresh")  # the next save repairs it
    assert load_state(KEY, name, 1) == b"fresh"


def test_wrong_version_and_foreign_file():
    save_state(KEY, "v", 1, b"old format")
    got, warned = _caught(load_state, KEY, "v", 2)
    assert got is None and len(warned) == 1 and "version 1" in str(warned[0].message)
    # a file copied under another model's name is refused (the header names its model)
    other = "f" * 24
    save_state(KEY, "moved", 1, b"x")
    os.makedirs(state_path(other, "moved").parent, exist_ok=True)
    os.replace(state_path(KEY, "moved"), state_path(other, "moved"))
    got, warned = _caught(load_state, other, "moved", 1)
    assert got is None and len(warned) == 1 and KEY in str(warned[0].message)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="name"):
        save_state(KEY, "../escape", 1, b"")
    with pytest.raises(ValueError, match="key"):
        load_state("", "x", 1)
    with pytest.raises(ValueError, match="version"):
        save_state(KEY, "x", -1, b"")
    with pytest.raises(TypeError, match="payload"):
        save_state(KEY, "x", 1, "text")
    with pytest.raises(TypeError, match="persist"):
        persist.resolve_persist("yes")


def test_unwritable_dir_warns_once_never_raises(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TOKENLOOM_CACHE_DIR", str(blocker))
    _, warned = _caught(save_state, KEY, "w", 1, b"data")
    assert len(warned) == 1 and "stays in memory" in str(warned[0].message)
    _, warned = _caught(save_state, KEY, "w", 1, b"data")
    assert not warned
    assert load_state(KEY, "w", 1) is None


def test_opt_out_env(monkeypatch):
    assert persist.persistence_enabled()
    for off in ("0", "false", "no", "OFF"):
        monkeypatch.setenv("TOKENLOOM_PERSIST", off)
        assert not persist.persistence_enabled()
        assert persist.resolve_persist(None) is False
        assert persist.resolve_persist(True) is True, "the keyword overrides the environment"
    monkeypatch.setenv("TOKENLOOM_PERSIST", "1")
    assert persist.resolve_persist(False) is False


def test_load_object_turns_value_errors_into_one_warning():
    save_state(KEY, "obj", 1, b"not json")
    got, warned = _caught(load_object, KEY, "obj", 1, lambda b: json.loads(b.decode()))
    assert got is None and len(warned) == 1


def _writer(args):
    key, i, n = args
    for j in range(n):
        save_state(key, "race", 1, bytes([i]) * (1000 + 10 * i + j))


def test_concurrent_writers_never_corrupt():
    """Threads and processes writing the same state: every read sees one whole payload."""
    n = 30
    threads = [threading.Thread(target=_writer, args=((KEY, i, n),)) for i in range(4)]
    seen = []
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        got, warned = _caught(load_state, KEY, "race", 1)
        assert not warned
        if got is not None:
            seen.append(got)
    for t in threads:
        t.join()
    code = (
        f"import sys; sys.path.insert(0, {SRC!r}); from tokenloom.spec.persist import save_state\n"
        f"for j in range(40): save_state({KEY!r}, 'race', 1, bytes([int(sys.argv[1])]) * (2000 + j))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(10 + i)], cwd=ROOT) for i in range(3)]
    while any(p.poll() is None for p in procs):
        got, warned = _caught(load_state, KEY, "race", 1)
        assert not warned
        if got is not None:
            seen.append(got)
    assert all(p.wait() == 0 for p in procs)
    final = load_state(KEY, "race", 1)
    seen.append(final)
    for got in seen:
        assert len(set(got)) == 1, "a payload mixes two writers"
    assert final[0] in (10, 11, 12) and len(final) == 2039
    assert not list(state_path(KEY, "race").parent.glob("*.tmp"))


def test_state_saver_throttles_and_flushes():
    rec = TokenRecycler(50, 3)
    saver = StateSaver(KEY, "saver", 1, rec, min_interval=3600)
    saver.flush()
    assert load_state(KEY, "saver", 1) is None, "nothing changed yet: nothing written"
    rec.update([1], [[2, 3, 4]])
    saver.changed()  # first change: saved at once (written in the background)
    saver.flush()  # waits for that write
    assert TokenRecycler.from_bytes(load_state(KEY, "saver", 1)).adjacency()[1].tolist() == [2, 3, 4]
    rec.update([1], [[5, 6, 7]])
    saver.changed()  # within min_interval: kept dirty
    assert TokenRecycler.from_bytes(load_state(KEY, "saver", 1)).adjacency()[1].tolist() == [2, 3, 4]
    persist.flush_all()  # what atexit runs
    assert TokenRecycler.from_bytes(load_state(KEY, "saver", 1)).adjacency()[1].tolist() == [5, 6, 7]


def test_recycler_bytes_round_trip_and_validation():
    rec = TokenRecycler(100, 4)
    rng = np.random.default_rng(0)
    rec.update(rng.integers(0, 100, 30), rng.integers(0, 100, (30, 4)))
    data = rec.to_bytes()
    back = TokenRecycler.from_bytes(data, 100, 4)
    assert np.array_equal(back.adjacency(), rec.adjacency())
    with pytest.raises(ValueError, match="vocab"):
        TokenRecycler.from_bytes(data, 101)
    with pytest.raises(ValueError, match="k mismatch"):
        TokenRecycler.from_bytes(data, None, 8)
    with pytest.raises(ValueError):
        TokenRecycler.from_bytes(data[:-1])
    bad = bytearray(data)
    bad[-4:] = (1000).to_bytes(4, "little")
    with pytest.raises(ValueError, match="corrupt"):
        TokenRecycler.from_bytes(bytes(bad))
    with pytest.raises(TypeError):
        TokenRecycler.from_bytes("text")


def test_model_key_is_stable_and_distinguishes(tiny_llama):
    from tokenloom.integrations.hf.models import make_tiny_llama

    key = persist.model_key(tiny_llama)
    assert key == persist.model_key(tiny_llama) and len(key) == 24
    assert persist.model_key(make_tiny_llama(seed=0)) == key, "same weights and config, another object"
    assert persist.model_key(make_tiny_llama(seed=1)) != key, "other weights"
    assert persist.model_key(make_tiny_llama(layers=3)) != key, "other config"
    from tokenloom.runtime.cpupack import pack_available, packed_linears

    if pack_available():
        with packed_linears(tiny_llama, True):
            assert persist.model_key(tiny_llama) == key, "independent of CPU packing"


def _prompt(seed, n=40):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 49152, (1, n), generator=g)


def test_default_recycler_saved_and_loaded(tiny_llama):
    """generate(method="recycling") saves the per-model default recycler; a fresh start (a new
    process, here: the in-process defaults forgotten) loads exactly the saved matrix."""
    reset_default_recyclers()
    tokenloom.generate(tiny_llama, _prompt(1), method="recycling", max_new_tokens=16, tree="2.2.2-8", eos_token_id=[])
    key = persist.model_key(tiny_llama)
    rec = default_recycler(49152, model=tiny_llama)
    assert rec.adjacency().any()
    persist.flush_all()  # waits for the background write
    saved = load_state(key, state_name(8), STATE_VERSION)
    assert saved is not None and np.array_equal(TokenRecycler.from_bytes(saved).adjacency(), rec.adjacency())
    reset_default_recyclers()
    again, warned = _caught(default_recycler, 49152, 8)
    assert not again.adjacency().any(), "without a model: a cold, unpersisted recycler"
    loaded = default_recycler(49152, model=tiny_llama)
    assert loaded is not rec and np.array_equal(loaded.adjacency(), rec.adjacency())
    reset_default_recyclers()
    assert not default_recycler(49152, model=tiny_llama, persist=False).adjacency().any()
    reset_default_recyclers()


def test_kept_states_follow_the_cache_folder(tiny_llama, monkeypatch, tmp_path):
    """A kept default state belongs to the cache folder it was loaded from: after
    TOKENLOOM_CACHE_DIR changes, the next call gets the new folder's saved state, saves go to
    the new folder, and the first folder keeps its own state (never overwritten by the other)."""
    from tokenloom.spec.suffix import store

    reset_default_recyclers()
    store.reset_default_suffix_caches()
    key, name = persist.model_key(tiny_llama), state_name(8)
    a, b = tmp_path / "a", tmp_path / "b"

    def saved(folder):
        monkeypatch.setenv("TOKENLOOM_CACHE_DIR", str(folder))
        return TokenRecycler.from_bytes(load_state(key, name, STATE_VERSION)).adjacency()

    monkeypatch.setenv("TOKENLOOM_CACHE_DIR", str(b))
    in_b = TokenRecycler(49152, 8)
    in_b.update([7], [[1, 2, 3, 4, 5, 6, 7, 8]])
    save_state(key, name, STATE_VERSION, in_b.to_bytes())  # folder b holds a state of its own

    monkeypatch.setenv("TOKENLOOM_CACHE_DIR", str(a))
    rec_a = default_recycler(49152, model=tiny_llama)
    assert not rec_a.adjacency().any(), "folder a: a cold start"
    rec_a.update([5], [[9] * 8])
    recycler_changed(rec_a, tiny_llama)
    cache_a = store.default_suffix_cache(49152, model=tiny_llama)
    cache_a.insert([1, 2, 3])

    monkeypatch.setenv("TOKENLOOM_CACHE_DIR", str(b))
    # a request that started in folder a ends after the change: saved into a, not b
    store.suffix_cache_changed(cache_a, tiny_llama)
    rec_b = default_recycler(49152, model=tiny_llama)
    assert rec_b is not rec_a and np.array_equal(rec_b.adjacency(), in_b.adjacency()), "folder b's own state"
    assert store.default_suffix_cache(49152, model=tiny_llama) is not cache_a
    rec_b.update([6], [[4] * 8])
    recycler_changed(rec_b, tiny_llama)
    persist.flush_all()
    assert np.array_equal(saved(b), rec_b.adjacency())
    assert np.array_equal(saved(a), rec_a.adjacency()), "folder a keeps its own state"
    got = store.SuffixCache.from_bytes(load_state(key, store.STATE_NAME, store.STATE_VERSION)).sequences()  # folder a (set by saved)
    assert [s.tolist() for s in got] == [[1, 2, 3]]
    monkeypatch.setenv("TOKENLOOM_CACHE_DIR", str(b))
    assert load_state(key, store.STATE_NAME, store.STATE_VERSION) is None, "folder a's suffix cache never reaches folder b"
    reset_default_recyclers()
    store.reset_default_suffix_caches()


def test_persist_opt_outs_write_nothing(tiny_llama, monkeypatch, _private_cache_dir):
    reset_default_recyclers()
    tokenloom.generate(tiny_llama, _prompt(2), method="recycling", max_new_tokens=8, tree="2.2.2-8",
                       eos_token_id=[], persist=False)
    monkeypatch.setenv("TOKENLOOM_PERSIST", "0")
    reset_default_recyclers()
    tokenloom.generate(tiny_llama, _prompt(2), method="recycling", max_new_tokens=8, tree="2.2.2-8", eos_token_id=[])
    persist.flush_all()
    assert not (_private_cache_dir / "state").exists()
    with pytest.raises(TypeError, match="persist"):
        tokenloom.generate(tiny_llama, _prompt(2), method="recycling", max_new_tokens=2, persist="no")
    reset_default_recyclers()


def test_corrupted_recycler_file_cold_start(tiny_llama):
    reset_default_recyclers()
    key = persist.model_key(tiny_llama)
    save_state(key, state_name(8), STATE_VERSION, TokenRecycler(1000, 8).to_bytes())  # another vocabulary
    rec, warned = _caught(lambda: default_recycler(49152, model=tiny_llama))
    assert len(warned) == 1 and "vocab" in str(warned[0].message)
    assert not rec.adjacency().any()
    out = tokenloom.generate(tiny_llama, _prompt(3), method="recycling", max_new_tokens=8, tree="2.2.2-8", eos_token_id=[])
    assert out.stats.new_tokens == 8
    reset_default_recyclers()


_SECOND_PROCESS = r"""
import json, sys
sys.path.insert(0, "."); sys.path.insert(0, sys.argv[1])
import torch, tokenloom
from tokenloom.integrations.hf.models import make_tiny_llama
from tokenloom.spec.persist import model_key
model = make_tiny_llama()
g = torch.Generator().manual_seed(5)
ids = torch.randint(3, 49152, (1, 40), generator=g)
out = tokenloom.generate(model, ids, method="recycling", max_new_tokens=48, tree="2.2.2-16", eos_token_id=[],
                         seed_prefill=False)
print(json.dumps({"mat": out.stats.spec.mean_accepted, "key": model_key(model), "tokens": out.sequences.tolist()}))
"""


def test_second_process_starts_hot(_private_cache_dir):
    """Two processes run the same request: the second one drafts from the first one's matrix
    (more tokens accepted per step), with the same output."""
    env = dict(os.environ, TOKENLOOM_CACHE_DIR=str(_private_cache_dir), OMP_NUM_THREADS="1")
    runs = []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", _SECOND_PROCESS, SRC], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert runs[0]["key"] == runs[1]["key"]
    assert runs[0]["tokens"] == runs[1]["tokens"]
    assert runs[1]["mat"] > runs[0]["mat"], runs
    assert state_path(runs[0]["key"], state_name(8)).is_file()


def test_first_call_reports_calibration_apart(tiny_llama, monkeypatch):
    """The step-cost calibration of tree="auto" (first call on a machine) is set-up, reported in
    stats.setup_seconds, not inside the decoding seconds; later calls have none."""
    import time

    from tokenloom.spec.sizing import clear_step_cost_cache

    monkeypatch.setenv("TOKENLOOM_NO_DISK_CACHE", "1")
    clear_step_cost_cache()
    start = time.perf_counter()
    first = tokenloom.generate(tiny_llama, _prompt(7), method="recycling", max_new_tokens=6, eos_token_id=[], persist=False)
    wall = time.perf_counter() - start
    assert first.stats.setup_seconds > 0 and first.stats.extra["setup_seconds"] == first.stats.setup_seconds
    assert first.stats.seconds + first.stats.setup_seconds <= wall
    assert "setup_seconds=" in first.stats.line("recycling")
    again = tokenloom.generate(tiny_llama, _prompt(7), method="recycling", max_new_tokens=6, eos_token_id=[], persist=False)
    assert again.stats.setup_seconds < first.stats.setup_seconds, "cached: no second calibration"
    plain = tokenloom.generate(tiny_llama, _prompt(7), method="plain", max_new_tokens=6, eos_token_id=[])
    assert plain.stats.setup_seconds == 0.0 and "setup_seconds" not in plain.stats.line("plain")
    clear_step_cost_cache()


def test_atomic_write_uses_unique_temporary_names_and_cleans_up(tmp_path, monkeypatch):
    """The one writer of tokenloom's files: concurrent writers never share a temporary name, a
    failed rename leaves neither a temporary file nor a partial target."""
    import os
    import threading

    from tokenloom.spec.persist import atomic_write

    target = tmp_path / "sub" / "state.bin"
    names = []
    real = os.replace

    def spy(src, dst):
        names.append(src)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    threads = [threading.Thread(target=atomic_write, args=(target, bytes([i]) * 1000)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(names)) == 8 and target.read_bytes() in {bytes([i]) * 1000 for i in range(8)}

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write(tmp_path / "other.bin", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"] and [p.name for p in (tmp_path / "sub").iterdir()] == ["state.bin"]


def test_separate_states_give_each_user_its_own(tiny_llama):
    """Within ``separate_states(store, user)`` the process-wide recycler and suffix cache are
    the user's own, kept between its blocks; outside, the process's own are back untouched."""
    from tokenloom.spec.suffix.store import default_suffix_cache, reset_default_suffix_caches

    reset_default_recyclers()
    reset_default_suffix_caches()
    process = default_recycler(49152, model=tiny_llama, persist=False)
    suffix = default_suffix_cache(49152, model=tiny_llama, persist=False)
    store: dict = {}
    with persist.separate_states(store, "a"):
        a = default_recycler(49152, model=tiny_llama, persist=False)
        tokenloom.generate(tiny_llama, _prompt(2), method="recycling", max_new_tokens=12, tree="2.2.2-8",
                           eos_token_id=[], persist=False)
        assert a is not process and a.adjacency().any()
        assert default_suffix_cache(49152, model=tiny_llama, persist=False) is not suffix
    with persist.separate_states(store, "b"):
        b = default_recycler(49152, model=tiny_llama, persist=False)
        assert b is not a and b is not process and not b.adjacency().any()
    with persist.separate_states(store, "a"):
        assert default_recycler(49152, model=tiny_llama, persist=False) is a  # kept for its user
        reset_default_recyclers()  # a reset inside a block forgets the user's states only
        assert default_recycler(49152, model=tiny_llama, persist=False) is not a
    assert default_recycler(49152, model=tiny_llama, persist=False) is process
    assert default_suffix_cache(49152, model=tiny_llama, persist=False) is suffix
    assert not process.adjacency().any(), "the user's request never wrote into the process's recycler"
    # the block restores the process's states when its body raises
    with pytest.raises(RuntimeError):
        with persist.separate_states(store, "c"):
            default_recycler(49152, model=tiny_llama, persist=False)
            raise RuntimeError("boom")
    assert default_recycler(49152, model=tiny_llama, persist=False) is process
    reset_default_recyclers()
    reset_default_suffix_caches()
