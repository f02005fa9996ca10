"""The candidate-generator contract of the installed transformers, checked against tokenloom's
``RecyclingCandidateGenerator`` (issue 27).

transformers changes what its assisted loop reads off a candidate generator between releases
(5.25 added ``num_drafting_tokens``, read before the loop starts). This test derives the contract
from the installed transformers itself, so the next such change fails here, naming the missing
attribute, instead of failing a user's ``model.generate(..., custom_generate=...)``:

* every public name that HF's model-free generator, ``PromptLookupCandidateGenerator``, has on
  its class (methods, properties, class attributes), and
* every attribute ``GenerationMixin._assisted_decoding`` reads as ``candidate_generator.<name>``
  that a ``PromptLookupCandidateGenerator`` instance has (names it lacks, such as
  ``assistant_model``, belong to the model-backed generators and are read behind an
  ``isinstance`` guard)

must exist on a ``RecyclingCandidateGenerator`` instance.
"""

from __future__ import annotations

import inspect
import re

import pytest

transformers = pytest.importorskip("transformers")

from transformers.generation import candidate_generator as hf_cg  # noqa: E402
from transformers.generation.utils import GenerationMixin  # noqa: E402

import tokenloom.integrations.hf.custom_generate as tlhf  # noqa: E402
from tokenloom.spec.recycling.recycler import TokenRecycler  # noqa: E402

PEER = "PromptLookupCandidateGenerator"


def _peer():
    cls = getattr(hf_cg, PEER)
    return cls, cls(eos_token_id=None, num_output_tokens=4, max_length=64)


def _class_names(cls) -> set:
    """Public names ``cls`` defines or inherits beyond ``object``."""
    return {n for n in dir(cls) if not n.startswith("_")} - set(dir(object))


def _read_by_assisted_loop() -> set:
    """Names the installed transformers' assisted loop reads off its candidate generator."""
    src = inspect.getsource(GenerationMixin._assisted_decoding)
    return set(re.findall(r"\bcandidate_generator\.([A-Za-z_]\w*)", src))


def required_names() -> dict:
    """``{name: why}``: what a model-free candidate generator must offer on this transformers."""
    cls, inst = _peer()
    need = {n: f"{PEER} has it on its class" for n in _class_names(cls)}
    for n in sorted(_read_by_assisted_loop()):
        if hasattr(inst, n):
            need.setdefault(n, f"GenerationMixin._assisted_decoding reads candidate_generator.{n}")
    return need


def missing_names(generator) -> list:
    """``['name (why)', ...]`` for each required name ``generator`` lacks."""
    return [f"{n} ({why})" for n, why in sorted(required_names().items()) if not hasattr(generator, n)]


def _ours(**kw):
    return tlhf.RecyclingCandidateGenerator(TokenRecycler(64), 3, **kw)


def test_contract_is_derived_from_the_installed_transformers():
    need = required_names()
    # The two methods of HF's abstract base are part of every line's contract: a derivation that
    # lost them (a renamed peer, a moved loop) must fail rather than pass vacuously.
    assert {"get_candidates", "update_candidate_strategy"} <= set(need)
    assert _read_by_assisted_loop(), "found no candidate_generator.<name> reads in _assisted_decoding"


def test_recycling_candidate_generator_has_every_required_attribute():
    gen = _ours()
    missing = missing_names(gen)
    assert not missing, (
        f"RecyclingCandidateGenerator lacks what transformers {transformers.__version__} expects of a "
        f"candidate generator: {', '.join(missing)}"
    )


def test_required_values_match_hf_semantics():
    gen, need = _ours(), required_names()
    if "num_drafting_tokens" in need:
        assert gen.num_drafting_tokens == 3  # the most candidates one step proposes
    if "requires_model_outputs" in need:
        assert gen.requires_model_outputs is False  # get_candidates(input_ids) only


def test_a_removed_attribute_is_named():
    """The check names what is missing: a generator without ``update_candidate_strategy`` (and,
    on lines that read it, ``num_drafting_tokens``) is reported by name."""

    class Stripped:
        def get_candidates(self, input_ids):
            return input_ids, None

    missing = " ".join(missing_names(Stripped()))
    assert "update_candidate_strategy" in missing
    if "num_drafting_tokens" in _read_by_assisted_loop():
        assert "num_drafting_tokens" in missing
