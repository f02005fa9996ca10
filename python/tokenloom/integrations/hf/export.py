"""Export a model (by default the embedded SmolLM2 GGUF) to a Hugging Face directory that other
stacks load as they are: vLLM, transformers 4.57 and 5.x, ``tokenloom.models.load``.

The weights are written dequantised (float32 by default: exact comparisons between stacks), with
``config.json``, ``generation_config.json`` (the GGUF's EOS) and a tokenizer that loads
``tokenizer.json`` verbatim on every transformers line (``tokenizer_class`` from
:data:`tokenloom.runtime.compat.TOKENIZER_CLASS`; a ``LlamaTokenizer`` name would make 5.x rebuild
a sentencepiece-style pipeline that decodes byte-level BPE without spaces). The export is checked
before returning: the saved tokenizer encodes a probe text to the same ids and decodes it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from tokenloom.integrations.hf.models import default_model_path, load
from tokenloom.runtime.compat import TOKENIZER_CLASS, drop_gguf_quantizer

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["PROBE_TEXT", "export_hf"]

#: Text whose encoding and decoding the exported tokenizer must reproduce (spaces, tabs,
#: newlines, accents, an emoji, code, the chat markers).
PROBE_TEXT = "Hello world , ok . Tabs\tand\nnew lines, café ☕ <|im_start|>user\ndef f(n):\n    return n<|im_end|>"


def export_hf(
    out_dir: Union[str, os.PathLike],
    model_path: Union[None, str, os.PathLike] = None,
    *,
    dtype: Optional["torch.dtype"] = None,
) -> Path:
    """Write ``model_path`` (default: the embedded model's GGUF) to ``out_dir`` as a Hugging Face
    directory (safetensors weights, configs, tokenizer).

    Args:
        out_dir: the directory to write (created; files already there are overwritten).
        model_path: a ``.gguf`` file or an HF directory; None for the embedded model.
        dtype: weight dtype (default float32).

    Returns:
        ``Path(out_dir)``.

    Raises:
        FileNotFoundError: the model is not there (for the embedded one: the install command).
        RuntimeError: the saved tokenizer does not reproduce the original's ids or text.
    """
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load(model_path if model_path is not None else default_model_path(), dtype=dtype)
    drop_gguf_quantizer(model)  # 5.x: dequantised weights, but a GGUF quantizer that refuses to save
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    cfg["tokenizer_class"] = TOKENIZER_CLASS
    cfg["add_bos_token"] = False if not _adds_prefix(tokenizer) else cfg.get("add_bos_token", True)
    # Byte-level BPE decodes exactly; the WordPiece clean-up would strip spaces before punctuation.
    cfg["clean_up_tokenization_spaces"] = False
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")

    saved = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    want = tokenizer(PROBE_TEXT, add_special_tokens=True)["input_ids"]
    got = saved(PROBE_TEXT, add_special_tokens=True)["input_ids"]
    text = saved.decode(got)
    if got != want or text != PROBE_TEXT or saved.eos_token != tokenizer.eos_token:
        raise RuntimeError(
            f"export_hf: the tokenizer saved in {out} does not reproduce the original "
            f"(ids equal: {got == want}; decoded {text!r}; eos {saved.eos_token!r} vs {tokenizer.eos_token!r})"
        )
    return out


def _adds_prefix(tokenizer: object) -> bool:
    enc = tokenizer("a", add_special_tokens=True)["input_ids"]  # type: ignore[operator]
    return len(enc) != len(tokenizer("a", add_special_tokens=False)["input_ids"])  # type: ignore[operator]
