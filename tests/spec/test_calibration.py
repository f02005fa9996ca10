"""tokenloom.spec.calibration: the measured kernel choice and the calibration hygiene rules,
driven by injected timings and load averages (no real timing decides any assertion)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from tokenloom.integrations.hf.models import make_tiny_llama
from tokenloom.spec import calibration as cal
from tokenloom.spec import persist, sizing


@pytest.fixture(autouse=True)
def _fresh():
    cal.clear_pack_choices()
    sizing.clear_step_cost_cache()
    yield
    cal.clear_pack_choices()
    sizing.clear_step_cost_cache()


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(vocab_size=256, layers=1)


def idle():
    return 0.0


def table_timer(table, calls=None):
    """A timer that runs the step and says it took ``table[kernel][tokens]`` seconds (a value,
    or a list consumed one call at a time)."""

    def timer(kernel, tokens, run):
        run()
        if calls is not None:
            calls.append((kernel, tokens))
        if kernel not in table and kernel in cal.TREE_KERNELS:  # row-split: one row as loaded
            kernel = "unpacked" if tokens == 1 else cal.TREE_KERNELS[kernel]
        v = table[kernel][tokens]
        return v.pop(0) if isinstance(v, list) else v

    return timer


TILES_SLOW = {1: 0.5, 17: 0.5}  # the tiles kernel loses in the tables below unless said otherwise
PACK_WINS = {"packed": {1: 0.010, 17: 0.012}, "unpacked": {1: 0.012, 17: 0.020}, "tiles": TILES_SLOW}
PACK_LOSES = {"packed": {1: 0.013, 17: 0.021}, "unpacked": {1: 0.012, 17: 0.020}, "tiles": TILES_SLOW}
TILES_WIN = {"packed": {1: 0.010, 17: 0.012}, "unpacked": {1: 0.012, 17: 0.020}, "tiles": {1: 0.009, 17: 0.011}}


# -- pure rules ---------------------------------------------------------------------------------


def test_decide_pack_rule():
    assert cal.decide_pack(PACK_WINS)[0] is True
    ok, why = cal.decide_pack(PACK_LOSES)
    assert ok is False and "one-token" in why and "13.00 ms" in why
    tie = {"packed": {1: 0.012, 17: 0.012}, "unpacked": {1: 0.012, 17: 0.020}}
    assert cal.decide_pack(tie)[0] is False  # a tie keeps the model as loaded
    tree_loses = {"packed": {1: 0.010, 17: 0.0211}, "unpacked": {1: 0.012, 17: 0.020}}
    ok, why = cal.decide_pack(tree_loses)
    assert ok is False and "17-token" in why
    within = {"packed": {1: 0.010, 17: 0.0209}, "unpacked": {1: 0.012, 17: 0.020}}
    assert cal.decide_pack(within)[0] is True


def test_decide_kernel_picks_the_least_cost_among_the_passing():
    assert cal.decide_kernel(PACK_WINS)[0] == "packed"
    assert cal.decide_kernel(PACK_LOSES)[0] == "unpacked"
    kern, why = cal.decide_kernel(TILES_WIN)
    assert kern == "tiles" and "also packed" in why
    # tiles is cheaper overall but loses the one-token step: refused, oneDNN kept
    t1_loses = {**TILES_WIN, "tiles": {1: 0.0121, 17: 0.005}}
    kern, why = cal.decide_kernel(t1_loses)
    assert kern == "packed" and "tiles one-token step" in why
    # only the kernels measured count (a bfloat16 model has no oneDNN kernel)
    assert cal.decide_kernel({"unpacked": TILES_WIN["unpacked"], "tiles": TILES_WIN["tiles"]})[0] == "tiles"
    assert cal.decide_kernel({"unpacked": {1: 1.0, 17: 2.0}})[0] == "unpacked"


def test_row_split_kernels_are_derived_and_chosen_only_where_their_base_loses_one_token():
    derived = cal.with_tree_kernels(TILES_WIN)
    assert derived["tiles-trees"] == {1: 0.012, 17: 0.011} and derived["packed-trees"] == {1: 0.012, 17: 0.012}
    assert cal.decide_kernel(derived)[0] == "tiles"  # the base wins one token too: it is cheaper
    # bfloat16 on an AVX2 CPU (measured shape): as loaded is fast for one token and 8x that for 17;
    # tiles loses the one-token step but makes trees cheap -> tiles for trees, as loaded for one row
    bf16 = cal.with_tree_kernels({"unpacked": {1: 0.057, 17: 0.439}, "tiles": {1: 0.075, 17: 0.155}})
    kern, why = cal.decide_kernel(bf16)
    assert kern == "tiles-trees" and "17-token step 155.00 ms < unpacked 439.00 ms" in why
    assert "tiles one-token step" in why  # the refused base says why
    # a row-split kernel must win the tree step outright
    flat = cal.with_tree_kernels({"unpacked": {1: 0.010, 17: 0.011}, "tiles": {1: 0.012, 17: 0.011}})
    assert cal.decide_kernel(flat)[0] == "unpacked"
    choice = cal.PackChoice(True, why, bf16, "k", 64, kernel=kern)
    assert cal.PackChoice.from_json(choice.to_json(), "k").kernel == "tiles-trees"


def test_tiles_for_one_row_and_onednn_for_trees_is_derived_and_chosen_where_both_win():
    """bfloat16 on an AMX CPU (measured shape, session 16): tiles streams one row fastest, oneDNN
    computes tree rows fastest -> "tiles-packed" (one-token step tiles', tree step packed's),
    which must pass the one-token rule against unpacked like a single kernel."""
    amx = {"unpacked": {1: 0.0276, 17: 0.0434}, "packed": {1: 0.0283, 17: 0.0372}, "tiles": {1: 0.0249, 17: 0.0435}}
    derived = cal.with_tree_kernels(amx)
    assert derived["tiles-packed"] == {1: 0.0249, 17: 0.0372} and derived["packed-trees"] == {1: 0.0276, 17: 0.0372}
    kern, why = cal.decide_kernel(derived)
    assert kern == "tiles-packed" and "tiles-packed one-token step 24.90 ms < unpacked 27.60 ms" in why
    # without oneDNN (a bfloat16 model on an AVX2 CPU) it is not derived
    assert "tiles-packed" not in cal.with_tree_kernels({"unpacked": amx["unpacked"], "tiles": amx["tiles"]})
    # tiles' one row no faster than as loaded: refused like any kernel, packed-trees kept
    slow = cal.with_tree_kernels({**amx, "tiles": {1: 0.0280, 17: 0.0435}})
    assert cal.decide_kernel(slow)[0] == "packed-trees"


def test_load_verdict_and_spread():
    assert cal.spread([1.0]) == 0.0 and cal.spread([1.0, 1.2, 1.1]) == pytest.approx(0.2 / 1.1)
    calm = cal.load_verdict(1.0, 2, [0.05, 0.1])
    assert not calm["heavy"] and calm["load_per_core"] == 0.5 and calm["why"] == ""
    busy = cal.load_verdict(2.5, 2, [0.05])
    assert busy["heavy"] and "load average 2.50 on 2 cores" in busy["why"]
    noisy = cal.load_verdict(0.0, 2, [0.9, 0.8, 0.1])
    assert noisy["heavy"] and "spread by 80%" in noisy["why"]
    assert not cal.load_verdict(float("nan"), 2, [])["heavy"]  # no load average: unknown, not heavy
    mine = cal.load_verdict(2.5, 2, [0.05], own=1.0)  # this process's own share is not "other load"
    assert not mine["heavy"] and mine["load_per_core"] == 0.75 and mine["own"] == 1.0


def test_probe_rule():
    assert not cal.probe_disagrees(0.010, 0.014)
    assert not cal.probe_disagrees(0.010, 0.007)
    assert cal.probe_disagrees(0.010, 0.016) and cal.probe_disagrees(0.010, 0.006)
    assert cal.probe_disagrees(0.0, 0.01) and cal.probe_disagrees(0.01, float("nan"))


def test_check_machine():
    here = {"cpu": "X", "flags": ["avx2"], "torch_build": "2.15", "threads": 2}
    cal.check_machine(dict(here), here)
    with pytest.raises(ValueError, match="another machine: cpu 'Y'"):
        cal.check_machine({**here, "cpu": "Y"}, here)
    with pytest.raises(ValueError, match="threads 4"):
        cal.check_machine({**here, "threads": 4}, here)
    with pytest.raises(ValueError, match="names no machine"):
        cal.check_machine(None, here)


# -- measuring ----------------------------------------------------------------------------------


def test_time_steps_interleaves_and_skips_the_warm_up(model):
    calls = []
    out = cal.time_steps(model, (17, 1), ("unpacked", "packed"), repeats=2, past_len=8,
                         timer=table_timer({"packed": {1: 1.0, 17: 2.0}, "unpacked": {1: 3.0, 17: 4.0}}, calls))
    assert out == {"unpacked": {1: [3.0, 3.0], 17: [4.0, 4.0]}, "packed": {1: [1.0, 1.0], 17: [2.0, 2.0]}}
    # round 0 is the warm-up; every round runs each size with both kernels, the order rotating
    assert calls == [("unpacked", 1), ("packed", 1), ("unpacked", 17), ("packed", 17),
                     ("packed", 1), ("unpacked", 1), ("packed", 17), ("unpacked", 17),
                     ("unpacked", 1), ("packed", 1), ("unpacked", 17), ("packed", 17)]
    with pytest.raises(ValueError, match="kernel"):
        cal.time_steps(model, (1,), ("mkl",), repeats=1, past_len=8)
    with pytest.raises(ValueError, match="sizes >= 1"):
        cal.time_steps(model, (0,), repeats=1, past_len=8)


def test_time_steps_of_a_batch_run_one_forward_of_rows_trees(model, monkeypatch):
    """rows > 1: each timed step is one batched tree forward of ``rows`` trees of the size."""
    from tokenloom.runtime import treeattn

    widths = []
    forward = treeattn.batch_tree_forward

    def watch(m, cache, tokens, parents, depths, **kw):
        widths.append([len(t) for t in tokens])
        return forward(m, cache, tokens, parents, depths, **kw)

    monkeypatch.setattr(treeattn, "batch_tree_forward", watch)
    out = cal.time_steps(model, (1, 5), repeats=1, past_len=8, rows=3, timer=table_timer({"unpacked": {1: 1.0, 5: 2.0}}))
    assert out == {"unpacked": {1: [1.0], 5: [2.0]}}
    assert widths == [[1, 1, 1], [5, 5, 5]] * 2  # the warm-up round, then the timed one
    with pytest.raises(ValueError, match="rows >= 1"):
        cal.time_steps(model, (1,), repeats=1, past_len=8, rows=0)


def test_a_batch_curve_has_its_own_key_and_record(model, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLOOM_CACHE_DIR", str(tmp_path))
    timer = table_timer({"unpacked": {1: 0.01, 5: 0.02}})
    one = sizing.calibrate_step_cost(model, (1, 5), past_len=8, repeats=1, timer=timer, loadavg=idle)
    three = sizing.calibrate_step_cost(model, (1, 5), past_len=8, repeats=1, timer=timer, loadavg=idle, rows=3)
    assert three.key == one.key + "-rows3" and three.seconds == one.seconds
    assert len(list((tmp_path / "state").glob("*-stepcost.bin"))) == 2
    sizing.clear_step_cost_cache()
    assert sizing.calibrate_step_cost(model, (1, 5), timer=timer, rows=3) == three  # read back (the probe agrees)


def test_the_packed_kernel_runs_packed(model):
    from tokenloom.runtime.cpupack import is_packed

    seen = []

    def timer(kernel, tokens, run):
        seen.append((kernel, is_packed(model), cal.kernel_of(model)))
        run()
        return 1.0

    cal.time_steps(model, (1,), cal.KERNELS, repeats=1, past_len=8, timer=timer)
    assert set(seen) == {("packed", True, "packed"), ("unpacked", False, "unpacked"), ("tiles", True, "tiles"),
                         ("packed-trees", True, "packed-trees"), ("tiles-trees", True, "tiles-trees"),
                         ("tiles-packed", True, "tiles-packed")}


# -- the kernel choice --------------------------------------------------------------------------


def _pack_file(model):
    return persist.state_path(cal.calibration_key(model, "unpacked"), cal.PACK_STATE)


def test_choose_pack_measures_saves_and_reloads(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choice = cal.choose_pack(model, repeats=2, past_len=8, timer=table_timer(PACK_WINS), loadavg=idle)
    assert choice.packed and choice.saved and choice.seconds == cal.with_tree_kernels(PACK_WINS)
    assert _pack_file(model).exists()
    assert cal.choose_pack(model) is choice  # in-process
    cal.clear_pack_choices()
    probe = {"packed": {1: 0.011}, "unpacked": {1: 1.0}}  # within 1.5x of the saved 10 ms
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cal.choose_pack(model, timer=table_timer(probe))
    assert again == choice and again.saved and again.load["load1"] == 0.0


def test_choose_pack_keeps_the_model_as_loaded_when_packing_loses(model):
    choice = cal.choose_pack(model, repeats=1, past_len=8, timer=table_timer(PACK_LOSES), loadavg=idle)
    assert not choice.packed and "not faster" in choice.reason


def test_a_disagreeing_probe_measures_again_with_one_warning(model):
    cal.choose_pack(model, repeats=1, past_len=8, timer=table_timer(PACK_WINS), loadavg=idle)
    cal.clear_pack_choices()
    slow = {"packed": {1: 0.030, 17: 0.012}, "unpacked": {1: 0.012, 17: 0.020}, "tiles": TILES_SLOW}  # packed one-token 3x the saved
    with pytest.warns(cal.CalibrationWarning, match="measuring the kernels again") as rec:
        choice = cal.choose_pack(model, repeats=1, past_len=8, timer=table_timer(slow), loadavg=idle)
    # oneDNN now loses one token but still wins the tree step: trees packed, one row as loaded
    assert len(rec) == 1 and choice.kernel == "packed-trees"
    cal.clear_pack_choices()
    assert cal.choose_pack(model, timer=table_timer(slow)).kernel == "packed-trees"  # the new choice was saved


def test_heavy_load_is_used_but_not_saved_with_one_warning(model):
    with pytest.warns(cal.CalibrationWarning, match="under heavy load") as rec:
        choice = cal.choose_pack(model, repeats=1, past_len=8, timer=table_timer(PACK_WINS), loadavg=lambda: 64.0)
        cal.choose_pack(model)
    assert len(rec) == 1 and choice.packed and not choice.saved and choice.load["heavy"]
    assert not _pack_file(model).exists()
    noisy = {"packed": {1: [0.010, 0.030, 0.010], 17: [0.01, 0.02, 0.04]},
             "unpacked": {1: [0.012, 0.012, 0.040], 17: [0.02, 0.06, 0.02]}, "tiles": TILES_SLOW}
    with warnings.catch_warnings(record=True) as again:  # the one warning was given already
        warnings.simplefilter("always")
        choice = cal.choose_pack(model, repeats=2, past_len=8, timer=table_timer(noisy), loadavg=idle, force=True)
    assert not again and "spread by" in choice.load["why"] and not choice.saved
    assert not _pack_file(model).exists()


def test_a_corrupted_or_foreign_pack_file_is_measured_again(model):
    cal.choose_pack(model, repeats=1, past_len=8, timer=table_timer(PACK_WINS), loadavg=idle)
    path = _pack_file(model)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x20
    path.write_bytes(bytes(data))
    cal.clear_pack_choices()
    with pytest.warns(persist.PersistWarning, match="checksum"):
        assert not cal.choose_pack(model, repeats=1, past_len=8, timer=table_timer(PACK_LOSES), loadavg=idle).packed
    # a valid file whose payload names another machine
    key = cal.calibration_key(model, "unpacked")
    payload = json.loads(persist.load_state(key, cal.PACK_STATE, cal.PACK_VERSION))
    payload["machine"]["cpu"] = "Some Other CPU"
    persist.save_state(key, cal.PACK_STATE, cal.PACK_VERSION, json.dumps(payload).encode())
    cal.clear_pack_choices()
    with pytest.warns(persist.PersistWarning, match="another machine: cpu 'Some Other CPU'") as rec:
        assert cal.choose_pack(model, repeats=1, past_len=8, timer=table_timer(PACK_WINS), loadavg=idle).packed
    assert len(rec) == 1
    # not a record at all: one warning per bad file, each measured again
    with pytest.warns(persist.PersistWarning, match="not a valid record") as rec:
        for bad in ([1, 2], {"key": key, "packed": "yes"}, {**payload, "seconds": {"packed": {"1": -1}}}):
            persist.save_state(key, cal.PACK_STATE, cal.PACK_VERSION, json.dumps(bad).encode())
            cal.clear_pack_choices()
            assert cal.choose_pack(model, repeats=1, past_len=8, timer=table_timer(PACK_WINS), loadavg=idle).packed
    assert len(rec) == 3
    # a choice saved by an older version (format 1: two kernels) is measured again, not read
    old = {"key": key, "packed": True, "reason": "r", "past_len": 8,
           "seconds": {"packed": {"1": 0.01, "17": 0.01}, "unpacked": {"1": 0.02, "17": 0.02}}}
    persist.save_state(key, cal.PACK_STATE, 1, json.dumps(old).encode())
    cal.clear_pack_choices()
    with warnings.catch_warnings():  # (its warning, one per file and process, was given above)
        warnings.simplefilter("ignore", persist.PersistWarning)
        choice = cal.choose_pack(model, repeats=1, past_len=8, timer=table_timer(TILES_WIN), loadavg=idle)
    assert choice.kernel == "tiles" and choice.saved


def test_auto_pack(model):
    import torch

    from tokenloom.runtime.cpupack import packed_linears

    cal.choose_pack(model, repeats=1, past_len=8, timer=table_timer(PACK_LOSES), loadavg=idle)
    assert cal.auto_pack(model, "auto") is False and cal.auto_pack(model, True) is True
    assert cal.auto_pack(model, False) is False and cal.auto_pack(model, "tiles") == "tiles"
    with packed_linears(model, True):
        assert cal.auto_pack(model, "auto") is True  # the caller packed: stays packed
        with pytest.raises(ValueError, match="outside packed_linears"):
            cal.choose_pack(model)
    with pytest.raises(ValueError, match="pack"):
        cal.auto_pack(model, "yes")
    f64 = make_tiny_llama(vocab_size=256, layers=1).to(torch.float64)
    assert cal.auto_pack(f64, "auto") is False  # nothing to pack: not measured


def test_generate_runs_the_measured_kernel(model):
    import torch

    import tokenloom
    from tokenloom.runtime.cpupack import is_packed

    seen = []
    handle = model.register_forward_pre_hook(lambda *_: seen.append((is_packed(model), cal.kernel_of(model))))
    ids = torch.tensor([[5, 6, 7, 8]])
    try:
        for table, kernel in ((PACK_LOSES, "unpacked"), (PACK_WINS, "packed"), (TILES_WIN, "tiles")):
            cal.choose_pack(model, repeats=1, past_len=8, timer=table_timer(table), loadavg=idle, force=True)
            seen.clear()
            tokenloom.generate(model, ids, max_new_tokens=3, eos_token_id=[])
            assert seen and set(seen) == {(kernel != "unpacked", kernel)}
    finally:
        handle.remove()


# -- the step-cost curve ------------------------------------------------------------------------


def test_the_curve_is_the_chosen_kernels(model):
    from tokenloom.runtime.cpupack import packed_linears

    table = {"packed": {1: 0.010, 5: 0.011, 17: 0.012}, "unpacked": {1: 0.012, 5: 0.016, 17: 0.020}}
    plain = sizing.calibrate_step_cost(model, (1, 5, 17), past_len=8, repeats=1, timer=table_timer(table), loadavg=idle)
    with packed_linears(model, True):
        packed = sizing.calibrate_step_cost(model, (1, 5, 17), past_len=8, repeats=1, timer=table_timer(table), loadavg=idle)
    assert plain.kernel == "unpacked" and plain.seconds == (0.012, 0.016, 0.020)
    assert packed.kernel == "packed" and packed.seconds == (0.010, 0.011, 0.012)
    assert plain.key != packed.key
    assert len(list(persist.state_path(plain.key, "x").parent.glob("*-stepcost.bin"))) == 2


def test_curve_medians_probe_and_machine(model):
    table = {"unpacked": {1: [0.5, 0.013, 0.011, 0.012], 2: [0.5, 0.020, 0.021, 0.022]}}
    cost = sizing.calibrate_step_cost(model, (1, 2), past_len=8, repeats=3, timer=table_timer(table), loadavg=idle)
    assert cost.seconds == (0.012, 0.021)  # medians of the timed rounds (the first call is the warm-up)
    sizing.clear_step_cost_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = sizing.calibrate_step_cost(model, (1, 2), timer=table_timer({"unpacked": {1: 0.012}}))
    assert again == cost and again.load["spread"] == cost.load["spread"]
    sizing.clear_step_cost_cache()
    busy_probe = {"unpacked": {1: 0.040, 2: 0.050}}
    with pytest.warns(cal.CalibrationWarning, match="measuring the curve again") as rec:
        fresh = sizing.calibrate_step_cost(model, (1, 2), past_len=8, repeats=1, timer=table_timer(busy_probe), loadavg=idle)
    assert len(rec) == 1 and fresh.seconds == (0.040, 0.050)
    key = sizing.calibration_key(model)
    payload = json.loads(persist.load_state(key, sizing.STEP_COST_STATE, sizing.STEP_COST_VERSION))
    assert payload["machine"]["cpu"] and payload["load"]["load1"] == 0.0 and payload["kernel"] == "unpacked"
    payload["machine"]["threads"] = 999
    persist.save_state(key, sizing.STEP_COST_STATE, sizing.STEP_COST_VERSION, json.dumps(payload).encode())
    sizing.clear_step_cost_cache()
    with pytest.warns(persist.PersistWarning, match="another machine: threads 999"):
        sizing.calibrate_step_cost(model, (1, 2), past_len=8, repeats=1, timer=table_timer(busy_probe), loadavg=idle)


def test_a_curve_of_other_sizes_is_measured_again(model):
    # a curve timed at 1 and 17 only (`tokenloom calibrate --tokens 1,17`) is held flat past 17:
    # the budget must not price 33 nodes from it
    table = {"unpacked": {1: 0.010, 5: 0.012, 17: 0.020, 33: 0.040}}
    calls = []
    sparse = sizing.calibrate_step_cost(model, (1, 17), past_len=8, repeats=1, timer=table_timer(table, calls), loadavg=idle)
    assert sparse(33) == 0.020 and sizing.calibrate_step_cost(model, (1, 17)) is sparse  # cached for what it covers
    sizing.clear_step_cost_cache()
    calls.clear()
    full = sizing.calibrate_step_cost(model, (1, 5, 17, 33), past_len=8, repeats=1, timer=table_timer(table, calls), loadavg=idle)
    assert {t for _, t in calls} == {1, 5, 17, 33}  # saved (1, 17) not reused: measured at every size asked
    assert full.tokens == (1, 5, 17, 33) and full(33) == 0.040
    assert sizing.calibrate_step_cost(model, (5, 33)) is full  # in process: a subset is covered
    sizing.clear_step_cost_cache()
    calls.clear()
    again = sizing.calibrate_step_cost(model, (1, 33), timer=table_timer(table, calls))
    assert again == full and {t for _, t in calls} == {1}  # the saved full curve replaced the sparse one (one-token probe)
    assert not sizing.covers(sparse, (1, 5)) and sizing.covers(full, (33, 1))


def test_a_curve_under_heavy_load_is_not_saved(model):
    with pytest.warns(cal.CalibrationWarning, match="stepcost measurement was taken under heavy load") as rec:
        cost = sizing.calibrate_step_cost(model, (1, 2), past_len=8, repeats=1,
                                          timer=table_timer({"unpacked": {1: 0.01, 2: 0.02}}), loadavg=lambda: 99.0)
    assert len(rec) == 1 and cost.load["heavy"] and sizing.calibrate_step_cost(model, (1, 2)) is cost
    assert not persist.state_path(cost.key, sizing.STEP_COST_STATE).exists()


def test_the_step_forward_is_in_the_key(model):
    # a curve timed through the module forward (lean off, or saved before the lean forward
    # existed) is not reused for lean steps: the key differs, so it is measured again
    from tokenloom.runtime import leanforward

    assert leanforward.step_forward(model) == f"lean-{leanforward.LEAN_VERSION}"
    lean = cal.calibration_key(model)
    leanforward.set_lean_forward(False)
    try:
        assert leanforward.step_forward(model) == "module"
        assert cal.calibration_key(model) != lean
    finally:
        leanforward.set_lean_forward(True)
    assert cal.calibration_key(model) == lean
    assert leanforward.step_forward(torch.nn.Linear(2, 2)) == "module"  # not a Llama: the module forward


def test_exact_rows_is_in_the_key(model):
    # a curve timed with each tree node's attention alone (exact_rows) is not the batched
    # attention's: neither is reused for the other
    from tokenloom.runtime.gqa import exact_rows

    plain = cal.calibration_key(model)
    with exact_rows():
        exact = cal.calibration_key(model)
    assert exact != plain and cal.calibration_key(model) == plain


def test_the_kernels_version_and_tiles_threads_are_in_the_key(model, monkeypatch):
    # a kernel choice or curve saved before a kernel changed (KERNELS_VERSION) is measured again;
    # a tiles curve depends on the tiles thread count, for "tiles" and "tiles-trees" alike
    from tokenloom.runtime import cpupack

    before = cal.calibration_key(model, "unpacked")
    monkeypatch.setattr(cpupack, "KERNELS_VERSION", cpupack.KERNELS_VERSION + 1)
    assert cal.calibration_key(model, "unpacked") != before
    for kernel in ("tiles", "tiles-trees"):
        cpupack.set_tiles_threads(1)
        one = cal.calibration_key(model, kernel)
        cpupack.set_tiles_threads(2)
        try:
            assert cal.calibration_key(model, kernel) != one
        finally:
            cpupack.set_tiles_threads(None)
