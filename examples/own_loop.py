"""A hand-written greedy loop with the step API (propose / accept) over Token Recycling's drafter,
for any HF causal LM and a DynamicCache that the loop index-selects itself.
Run: python examples/own_loop.py"""
import torch
from transformers import DynamicCache

import tokenloom
from tokenloom.runtime.compat import cache_arg  # past_key_values= (4.57) or cache= (5.x)
from tokenloom.spec.recycling.drafter import RecyclingDrafter
from tokenloom.spec.step import TreeStep


@torch.inference_mode()
def own_loop(model, input_ids, max_new_tokens=64, eos=2, recycler=None):
    rec = recycler or tokenloom.TokenRecycler(model.config.vocab_size)
    drafter = RecyclingDrafter(rec, tree="2.2.2-16", seed_prefill=False)  # owns its template
    cache = DynamicCache()
    logits = model(input_ids=input_ids, **cache_arg(model, cache), use_cache=True).logits
    out, past = [int(logits[0, -1].argmax())], input_ids.shape[1]  # prefill: cache = prompt
    while len(out) < max_new_tokens and out[-1] != eos:
        step = TreeStep.propose(drafter, out[-1], past, device=model.device, dtype=model.dtype)
        logits = model(input_ids=step.input_ids, attention_mask=step.attention_mask,
                       position_ids=step.position_ids, **cache_arg(model, cache), use_cache=True).logits
        new, keep = step.verify(logits)  # emitted tokens; cache positions to keep
        for layer in cache.layers:  # keep the prefix + the accepted path, drop the rest
            layer.keys, layer.values = layer.keys.index_select(2, keep), layer.values.index_select(2, keep)
        out += new
        past += len(new)
    out = out[:max_new_tokens]
    out = out[: out.index(eos) + 1] if eos in out else out
    return torch.cat([input_ids, torch.tensor([out], device=input_ids.device)], dim=1)


if __name__ == "__main__":
    from tokenloom.integrations.hf.chat import chat_input_ids
    from tokenloom.integrations.hf.models import load_default

    model, tok = load_default()
    ids = chat_input_ids(tok, "Explain speculative decoding in two sentences.")
    print(tok.decode(own_loop(model, ids)[0, ids.shape[1]:]))
