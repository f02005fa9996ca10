"""Pure-Python references for the byte-level tests and benchmarks; cover enumeration and the
brute-force next-byte distribution (scoring every cover with plain, uncached forwards) have
their one home in :mod:`tokenloom.eval.bytesoracle`, which the device check also runs."""

from __future__ import annotations

import json
from typing import List, Sequence, Tuple

from tokenloom.eval.bytesoracle import BruteForce, allowed_canonical, ref_covers

__all__ = ["BruteForce", "allowed_canonical", "expanded_tree", "plan_paths", "ref_covers", "ref_extension_plan", "ref_top_straddling"]


def expanded_tree(vocab, data: bytes, canonical: bool):
    """A CoverTree of ``data`` with every exact path expanded, and its live expanded nodes
    (the nodes that carry a distribution in ByteLM)."""
    from tokenloom._core import CoverTree

    tree = CoverTree(vocab.index, canonical)
    expanded = {0}
    tree.expand(0)
    for b in data:
        for n in tree.push(b):
            tree.expand(n)
            expanded.add(n)
    return tree, [n for n in tree.active() if n in expanded and tree.info(n)[5]]


def ref_top_straddling(vocab, tree, nodes, qs, scales, k):
    """Pure Python: every (node, token) with token bytes starting with prefix[end:] and running
    past the prefix end, q[token] > 0, scored scale * (mass of tokens starting with its bytes)."""
    prefix = tree.prefix
    byte_tokens = [(i, b) for i, b in enumerate(vocab.token_bytes) if b and not vocab.special[i]]
    out = []
    for n, q, sc in zip(nodes, qs, scales):
        rest = prefix[tree.info(n)[3] :]
        through = {}  # byte string -> mass of the tokens starting with it
        for u, bu in byte_tokens:
            for j in range(1, len(bu) + 1):
                through[bu[:j]] = through.get(bu[:j], 0.0) + float(q[u])
        for t, b in byte_tokens:
            if len(b) > len(rest) and b.startswith(rest) and q[t] > 0:
                out.append((n, t, sc * through[b]))
    out.sort(key=lambda x: (-x[2], x[0], x[1]))
    return out[:k]


def ref_extension_plan(token_bytes: Sequence[bytes], data: bytes) -> List[Tuple[int, ...]]:
    """Pure Python: the exact paths that ``CoverTree.extension_plan`` lists below the root of
    ``data`` (all covers), sorted, with the empty path (the root) first when it matters: every
    token path decoding to a prefix of ``data`` from which a cover can still be completed, i.e.
    the exact prefixes of the covers (an exact path that is no cover's prefix is never read)."""
    out = set()
    for c in ref_covers(token_bytes, data):
        for i in range(len(c) + 1):
            if i < len(c) or sum(len(token_bytes[t]) for t in c) == len(data):
                out.add(c[:i])
    return sorted(out)


def plan_paths(rows) -> List[Tuple[int, ...]]:
    """The token paths of ``extension_plan``'s rows below one node (a row after its parent)."""
    paths: List[Tuple[int, ...]] = []
    for k, (_, parent, t) in enumerate(rows):
        assert parent < k, "a row after its parent"
        paths.append((paths[parent] if parent >= 0 else ()) + (t,))
    return paths


def make_sp_tokenizer():
    """A small SentencePiece-style BPE (metaspace, dummy prefix, <0xNN> byte fallback, BOS)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["the cat sat on the mat", "the dog ate the bone", "héllo wörld", "a theme then there"] * 20
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tk.train_from_iterator(corpus, trainer)
    spec = json.loads(tk.to_str())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(256):
        vocab[f"<0x{i:02X}>"] = len(vocab)
    for tok, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1]):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    sp = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    sp.normalizer = tk.normalizer
    sp.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    sp.add_special_tokens(["<unk>", "<s>", "</s>"])
    sp.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=sp, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
