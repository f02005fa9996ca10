"""``append_kv``: the values transformers' ``DynamicCache.update`` gives, written in place into
spare slots of a buffer the layer keeps; through crops, compaction, row selection, a full
buffer and inference-mode changes, against a cache driven by ``update`` alone."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import DynamicCache  # noqa: E402

from tokenloom.runtime import kvcache  # noqa: E402
from tokenloom.runtime.kvcache import append_kv, cache_kv, compact_cache, crop_cache, select_rows  # noqa: E402

B, H, D, LAYERS = 2, 3, 4, 2


def _kv(t, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, t, D, generator=g), torch.randn(B, H, t, D, generator=g)


def _same(mine, ref):
    for (k1, v1), (k2, v2) in zip(cache_kv(mine), cache_kv(ref)):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


def _both(mine, ref, t, seed):
    for i in range(LAYERS):
        k, v = _kv(t, seed + i)
        got = append_kv(mine, i, k, v)
        want = ref.update(k, v, i)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    _same(mine, ref)


def test_appends_equal_update_through_crops_compaction_and_rows(monkeypatch):
    monkeypatch.setattr(kvcache, "APPEND_ROOM", 8)  # small: the buffer fills and is made again
    mine, ref = DynamicCache(), DynamicCache()
    _both(mine, ref, 5, 0)  # the first entries: update's own path (an empty layer)
    seed = 10
    for t in (1, 3, 1, 7, 2, 1, 9, 1):
        _both(mine, ref, t, seed)
        seed += 10
        length = kvcache.cache_length(mine)
        # a tree step's compaction (keep nodes 0 and 2 of the last t) and a crop
        if t >= 3:
            for c in (mine, ref):
                compact_cache(c, length - t, [0, 2])
            _same(mine, ref)
        if t == 7:
            for c in (mine, ref):
                crop_cache(c, length - 5)
            _same(mine, ref)
    held = mine.layers[0].__dict__["_tokenloom_kv"][0]
    assert mine.layers[0].keys.untyped_storage().data_ptr() == held.untyped_storage().data_ptr()
    # a row dropped (a copy) and the left padding cut (a view from slot 1): appends go on
    for c in (mine, ref):
        select_rows(c, [1], start=1)
    for t in (1, 4):
        for i in range(LAYERS):
            k, v = _kv(t, seed + i)
            assert torch.equal(append_kv(mine, i, k[:1], v[:1])[0], ref.update(k[:1], v[:1], i)[0])
        seed += 10
        _same(mine, ref)


def test_other_layers_and_transformers_update_in_between():
    mine, ref = DynamicCache(), DynamicCache()
    _both(mine, ref, 4, 0)
    _both(mine, ref, 2, 5)
    # transformers' own update (e.g. a forward through the model) replaces the views: the next
    # append makes a new buffer from them
    for c in (mine, ref):
        for i in range(LAYERS):
            c.update(*_kv(3, 50 + i), i)
    _both(mine, ref, 1, 60)

    class Recorded(DynamicCache):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def update(self, *args, **kwargs):
            self.calls += 1
            return super().update(*args, **kwargs)

    c = Recorded()
    append_kv(c, 0, *_kv(2, 1))  # a layer not yet made: update makes it
    assert c.calls == 1
    append_kv(c, 0, *_kv(1, 2))
    assert c.calls == 1  # in place


def test_inference_mode_changes_make_a_new_buffer():
    mine, ref = DynamicCache(), DynamicCache()
    with torch.inference_mode():
        _both(mine, ref, 4, 0)
        _both(mine, ref, 1, 5)
        assert mine.layers[0].__dict__["_tokenloom_kv"][0].is_inference()
    with torch.no_grad():  # an inference tensor takes no in-place write here
        _both(mine, ref, 2, 9)
        assert not mine.layers[0].__dict__["_tokenloom_kv"][0].is_inference()


def test_a_view_from_a_later_slot_appends_in_place():
    """A layer whose tensors start at slot a > 0 of its buffer (a cut of the front, as
    ``compact_rows`` / a narrow leaves them) appends at ``a + S``."""
    mine, ref = DynamicCache(), DynamicCache()
    _both(mine, ref, 6, 0)
    _both(mine, ref, 1, 5)
    for c in (mine, ref):
        kv = kvcache._KV(c)
        for i in range(LAYERS):
            k, v = kv.get(i)
            kv.set(i, k.narrow(2, 2, k.shape[2] - 2), v.narrow(2, 2, v.shape[2] - 2))
    before = mine.layers[0].__dict__["_tokenloom_kv"][0]
    _both(mine, ref, 2, 9)
    assert mine.layers[0].__dict__["_tokenloom_kv"][0] is before
    assert mine.layers[0].keys.storage_offset() - before.storage_offset() == 2 * D
