"""``tokenloom generate "PROMPT"``: chat-templated generation on the embedded model (or
``--model PATH``), streamed, with a stats line; ``--compare`` also runs plain greedy decoding
in the same process and prints the speedup."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def default_method() -> str:
    from tokenloom.decoding.generate import methods

    return "recycling" if "recycling" in methods() else "greedy"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate a reply to PROMPT and print tokens/s")
    p.add_argument("prompt", help="the user message (the chat template is applied)")
    p.add_argument("--method", default=None, help="decoding method (default: recycling when available, else greedy)")
    p.add_argument("--model", default=None, help="a local .gguf file or HF model directory (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-chat", action="store_true", help="use the prompt as raw text, no chat template")
    p.add_argument("--no-stream", action="store_true", help="print the text at the end instead of streaming")
    p.add_argument("--compare", action="store_true", help="also run plain greedy decoding and print the speedup")
    p.set_defaults(func=run)






def run(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from tokenloom.decoding.generate import generate
    from tokenloom.integrations.hf.chat import chat_input_ids
    from tokenloom.integrations.hf.models import load_or_default

    method = args.method or default_method()
    print(f"[tokenloom] loading {'model ' + args.model if args.model else 'embedded SmolLM2-135M-Instruct'} ...", file=sys.stderr)
    model, tokenizer = load_or_default(args.model)
    input_ids = chat_input_ids(tokenizer, args.prompt, chat=not args.no_chat)
    sampling = dict(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, seed=args.seed
    )
    streamer = None if args.no_stream else TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = generate(model, input_ids, method=method, max_new_tokens=args.max_new_tokens, streamer=streamer, **sampling)
    if args.no_stream:
        print(tokenizer.decode(out.sequences[0, input_ids.shape[1]:], skip_special_tokens=True))
    print(out.stats.line(method))
    if args.compare and method != "greedy":
        base = generate(model, input_ids, method="greedy", max_new_tokens=args.max_new_tokens, **sampling)
        print(base.stats.line("greedy"))
        same = base.sequences.shape == out.sequences.shape and bool((base.sequences == out.sequences).all())
        speedup = out.stats.tokens_per_second / max(base.stats.tokens_per_second, 1e-9)
        print(f"[tokenloom] speedup vs greedy: {speedup:.2f}x (same tokens: {same})")
    return 0
