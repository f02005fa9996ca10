"""A hand-written batched greedy loop with the step API over B left-padded prompts: one
drafter per row, every row's tree in one forward (BatchTreeStep), each row's accepted path
kept by compact_rows. Run: python examples/batch_loop.py"""
import torch
from transformers import DynamicCache

import tokenloom
from tokenloom.runtime.compat import cache_arg  # past_key_values= (4.57) or cache= (5.x)
from tokenloom.runtime.kvcache import cache_length, compact_rows
from tokenloom.spec.recycling.drafter import RecyclingDrafter
from tokenloom.spec.step import BatchTreeStep


@torch.inference_mode()
def batch_loop(model, input_ids, attention_mask, max_new_tokens=32, recycler=None):
    """Each row's first ``max_new_tokens`` greedy tokens (no stop token), as lists."""
    rec = recycler or tokenloom.TokenRecycler(model.config.vocab_size)
    rows, n = input_ids.shape
    drafters = [RecyclingDrafter(rec, tree="2.2.2-16", seed_prefill=False) for _ in range(rows)]
    cache = DynamicCache()
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # valid tokens only, as HF counts
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                   **cache_arg(model, cache), use_cache=True).logits
    out = [[int(t)] for t in logits[:, -1].argmax(-1)]
    starts = [n - int(m) for m in attention_mask.sum(-1)]  # row b's cache window: [start, end)
    ends = [n] * rows
    for b, d in enumerate(drafters):
        d.prefill(input_ids[b : b + 1, starts[b] :], out[b][0], None, logits[b, -1:])
    while min(len(o) for o in out) < max_new_tokens:
        past = cache_length(cache)
        step = BatchTreeStep.propose(drafters, [o[-1] for o in out], starts, ends, past,
                                     device=model.device, dtype=model.dtype)
        logits = model(input_ids=step.input_ids, attention_mask=step.attention_mask,
                       position_ids=step.position_ids, **cache_arg(model, cache), use_cache=True).logits
        for o, new in zip(out, step.verify(logits)):
            o += new
        ends = compact_rows(cache, past, ends, step.paths)  # each row keeps its accepted path
    return [o[:max_new_tokens] for o in out]


if __name__ == "__main__":
    from tokenloom.integrations.hf.chat import chat_input_ids
    from tokenloom.integrations.hf.models import load_default

    model, tok = load_default()
    rows = [chat_input_ids(tok, p)[0] for p in ("What is 2 + 2?", "Name three colours of the rainbow.")]
    n = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), n), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, n - len(r) :], mask[b, n - len(r) :] = r, 1
    for new in batch_loop(model, ids, mask):
        print(repr(tok.decode(new)))
