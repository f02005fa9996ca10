"""The step forward of a Llama-family model without transformers' module machinery.

A decode or tree step of a small model on a CPU is not all matrix products: on the embedded
model (float32, 2-core AMD EPYC, 200 cached tokens) a one-token step took ~55 ms, of which the
211 linears took ~34 ms. Most of the rest is Python: per layer, transformers goes through the
decoder layer, attention, MLP and norm modules (``nn.Module.__call__``, keyword plumbing, the
output records, the mask builder), ~30 layers x every step.

:func:`lean_logits` runs the same tensor operations in the same order, calling the model's own
submodules for what may differ between transformers lines or be swapped in (the embedding, the
rotary embedding, every linear, the activation, the cache's ``update``, the attention function
registered for ``"sdpa"``), and inlining only what is fixed: the RMS norm, ``rotate_half``, the
residual adds. Where a layer's q / k / v (and gate / up) tiles are packed as one weight
(:data:`tokenloom.runtime.cpupack.TILED_GROUPS`) each group runs as one call, and q's and k's
heads are rotated in one go (the same bits: each output column is computed as the separate
call computes it, and the rotation is elementwise). On the CPU the rotation is one call of
``tokenloom._core.rotate_heads`` (each product and the sum rounded as torch rounds them: the
same bits, written head-major). Where tokenloom's norms and activation are swapped in
(:mod:`tokenloom.runtime.layerops`, tiles blocks) each residual add runs in one call with the
norm after it, and ``act(gate) * up`` in one call from the gate / up group's output (the same
bits as the swapped modules called apart, which is what the model's own forward calls).
tokenloom's swapped linears (:mod:`tokenloom.runtime.cpupack`) run their ``step``:
their per-call checks (device, grad mode) are made once per step here. Its logits equal the model's own forward bit for bit (tested on both transformers
lines, float32 and bfloat16, one token and tree masks, batches). Measured on the machine above:
one token 54 -> 49 ms, a 9-token tree 73 -> 66 ms.

It runs only where that equality holds by construction; everything else returns ``None`` and
the caller runs ``model(...)``:

* the model is transformers' own ``LlamaForCausalLM`` (its exact classes: a subclass or another
  architecture may change the layer), with ``"sdpa"`` attention, in eval mode, without forward
  hooks on the modules it would bypass or call through ``step`` (e.g. accelerate's device hooks)
  and without gradients. transformers 5.x's own output-capturing hooks, which it installs for
  good the first time a call asks for hidden states or attentions, do not count while no call
  is capturing (they would return at once);
* the cache is a ``DynamicCache`` of full (not sliding-window) layers;
* the mask is 4D, or None for one query token (transformers builds a causal mask itself for
  longer inputs: the caller passes one).

A hook on the model itself also sends every step to ``model(...)``, except a pre-hook marked
:data:`COUNTING_HOOK` that only counts forwards: its count plus :func:`lean_forwards` is the
model's forwards (:class:`tokenloom.eval.specbench.ForwardCounter`).

:func:`set_lean_forward` turns it off (or back on) process-wide, e.g. to time both.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

__all__ = [
    "COUNTING_HOOK", "LEAN_VERSION", "lean_enabled", "lean_forwards", "lean_logits", "lean_supported", "set_lean_forward", "step_forward",
    "step_logits",
]

#: Bumped when the lean forward changes what a step costs: a step-cost curve or kernel choice
#: measured with another version is measured again (:func:`step_forward` is in their key).
LEAN_VERSION = 3

_ENABLED = [True]
#: whether CPU steps rotate the heads in one kernel call (:func:`_rotate_rows`; False: torch's
#: operations, :func:`_rotate`); the same bits either way, switched to time both
_ROTARY_KERNEL = [True]
_TILED: list = [None, None]  # tokenloom.runtime.layerops' TiledRMSNorm, TiledSiLU (imported on first use)
_SUPPORTED: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()
_COUNTS: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def lean_forwards(model: Any) -> int:
    """How many forwards of ``model`` :func:`step_logits` ran lean in this process (they do not
    call the module, so a forward hook on the model does not see them: a counter of forwards
    adds these)."""
    try:
        return _COUNTS.get(model, 0)
    except TypeError:
        return 0


def set_lean_forward(enabled: bool) -> None:
    """Use :func:`lean_logits` where it applies (True, the default) or always ``model(...)``."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    _ENABLED[0] = enabled


def lean_enabled() -> bool:
    """Whether :func:`step_logits` tries the lean forward."""
    return _ENABLED[0]


def step_forward(model: Any) -> str:
    """Which forward this process's steps of ``model`` run: ``"lean-<LEAN_VERSION>"`` where the
    lean forward is on and the model is one it runs (transformers' Llama on sdpa; a hook or
    grad mode can still send one call to the model), else ``"module"``. Part of the key of
    every step-cost measurement (:func:`tokenloom.spec.calibration.calibration_key`): a curve
    timed through the module forward says nothing about the lean one."""
    return f"lean-{LEAN_VERSION}" if _ENABLED[0] and _lean_model(model) else "module"


def _lean_model(model: Any) -> bool:
    """``model`` is transformers' own Llama (:func:`_structure_ok`, cached per model) on sdpa."""
    try:
        known = _SUPPORTED.get(model)
    except TypeError:  # not weak-referenceable: not a module
        return False
    if known is None:
        known = _structure_ok(model)
        _SUPPORTED[model] = known
    return known and getattr(model.model.config, "_attn_implementation", None) == "sdpa"


def _structure_ok(model: Any) -> bool:
    """The model is transformers' own Llama, module for module (checked once per model)."""
    try:
        from transformers.models.llama import modeling_llama as ml
    except ImportError:  # pragma: no cover - transformers without Llama
        return False
    if type(model) is not ml.LlamaForCausalLM or type(getattr(model, "model", None)) is not ml.LlamaModel:
        return False
    from tokenloom.runtime.layerops import TiledRMSNorm

    def llama_norm(norm: Any) -> bool:  # transformers' own, or tokenloom's swapped in for it
        if type(norm) is TiledRMSNorm:
            try:
                norm = norm.original[0]
            except ReferenceError:
                return False
        return type(norm) is ml.LlamaRMSNorm

    inner = model.model
    if not llama_norm(inner.norm) or type(inner.rotary_emb) is not ml.LlamaRotaryEmbedding:
        return False
    for layer in inner.layers:
        if (
            type(layer) is not ml.LlamaDecoderLayer
            or type(layer.self_attn) is not ml.LlamaAttention
            or type(layer.mlp) is not ml.LlamaMLP
            or not llama_norm(layer.input_layernorm)
            or not llama_norm(layer.post_attention_layernorm)
        ):
            return False
    return True


#: A forward pre-hook with this attribute set only counts calls (the lean forward adds its own
#: count, :func:`lean_forwards`): it does not send the step to ``model(...)``.
COUNTING_HOOK = "_tokenloom_counts_forwards"


_CAPTURE_MODULE = "transformers.utils.output_capturing"


def _idle_capture(hook: Any) -> bool:
    """``hook`` is transformers' own output-capturing forward hook (5.x installs one on every
    decoder layer and attention module the first time a call asks for hidden states or
    attentions, and keeps it) and no call is capturing now: it would return without doing
    anything, so the lean forward may skip it. Anything else, or a transformers without that
    module, is a real hook."""
    if getattr(hook, "__module__", None) != _CAPTURE_MODULE or getattr(hook, "__name__", None) != "output_capturing_hook":
        return False
    capturing = getattr(sys.modules.get(_CAPTURE_MODULE), "_active_collector", None)
    try:
        return capturing is not None and capturing.get() is None
    except Exception:  # noqa: BLE001 - an unknown collector: treat the hook as real
        return False


def _no_hooks(modules: Any) -> bool:
    # a plain loop, the hook dicts looked at only when not empty: ~400 modules per step
    for m in modules:
        post, pre = m._forward_hooks, m._forward_pre_hooks
        if post and any(not _idle_capture(h) for h in post.values()):
            return False
        if pre and any(not getattr(h, COUNTING_HOOK, False) for h in pre.values()):
            return False
    return True


def lean_supported(model: Any, cache: Any, attention_mask: Any, q_len: int) -> bool:
    """Whether :func:`lean_logits` gives the model's own logits for this call (see the module
    docstring for the conditions)."""
    import torch
    from torch.nn.modules import module as nn_module

    if not _ENABLED[0] or torch.is_grad_enabled():
        return False
    if not _lean_model(model) or model.training:
        return False
    cfg = model.model.config
    # torch's process-wide hooks (private names): present and non-empty, or unknown -> the model
    hooks = [getattr(nn_module, n, None) for n in ("_global_forward_hooks", "_global_forward_pre_hooks")]
    if any(h is None or h for h in hooks):
        return False
    inner = model.model
    layers = inner.layers[: cfg.num_hidden_layers]
    parts = [model, inner, inner.norm, model.lm_head]
    for layer in layers:  # the children read from ``_modules`` (nn.Module.__getattr__ is slow)
        sub = layer._modules
        attn, mlp = sub["self_attn"], sub["mlp"]
        a, f = attn._modules, mlp._modules
        parts += (layer, attn, mlp, sub["input_layernorm"], sub["post_attention_layernorm"])
        parts += (a["q_proj"], a["k_proj"], a["v_proj"], a["o_proj"], f["gate_proj"], f["up_proj"], f["down_proj"])
    if not _no_hooks(parts):
        return False
    if type(cache).__name__ != "DynamicCache" or any(type(x).__name__ != "DynamicLayer" for x in getattr(cache, "layers", ())):
        return False
    if attention_mask is None:
        return q_len == 1
    return isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4


def _rms(norm: Any, x: Any) -> Any:
    """``LlamaRMSNorm.forward``, the same operations."""
    import torch

    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _norm(norm: Any, x: Any, fused: bool) -> Any:
    """``norm(x)``: tokenloom's one-call norm where it is swapped in and ``fused`` (CPU), else
    the same operations as transformers' (:func:`_rms`)."""
    if fused and type(norm) is _TILED[0]:
        return norm.step(x)
    return _rms(norm, x)


def _add_norm(norm: Any, x: Any, delta: Any, fused: bool) -> Any:
    """``(x + delta, norm(x + delta))``: one call where tokenloom's norm is swapped in (the
    same bits as the add and the norm apart), else torch's add and :func:`_rms`."""
    if fused and type(norm) is _TILED[0]:
        return norm.add_step(x, delta)
    s = x + delta
    return s, _rms(norm, s)


def _signed_sin(sin: Any) -> Any:
    """``sin`` with its first half negated: what :func:`_rotate` multiplies the swapped halves
    by (made once per step)."""
    import torch

    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _rotate(x: Any, cos: Any, signed_sin: Any) -> Any:
    """``x * cos + rotate_half(x) * sin`` as transformers' ``apply_rotary_pos_emb``, bit for bit:
    ``rotate_half(x) * sin = cat(-x2, x1) * sin = cat(x2, x1) * cat(-sin1, sin2)`` (a product's
    rounding does not depend on which factor carries the sign), one negation per step instead
    of one per call (``signed_sin`` from :func:`_signed_sin`)."""
    import torch

    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin)


def _rows_cos_sin(cos: Any, signed_sin: Any, x: Any, b: int, t: int) -> Any:
    """(cos, signed sin (:func:`_signed_sin`), the dtype): [B * T, D] rows in the kernels'
    layout (float32: arrays; bfloat16: their bits) for :func:`_rotate_rows`, made once per
    step; None where the kernel does not take them (another dtype, an unexpected shape)."""
    import torch

    dt = x.dtype
    if dt not in (torch.float32, torch.bfloat16) or cos.dtype != dt or signed_sin.dtype != dt or cos.dim() != 3 or cos.shape != signed_sin.shape:
        return None
    if int(cos.shape[1]) != t or int(cos.shape[0]) not in (1, b):
        return None
    from tokenloom.runtime.swap import kernel_rows

    d = int(cos.shape[-1])
    return kernel_rows(cos.expand(b, t, d), d), kernel_rows(signed_sin.expand(b, t, d), d), dt


def _rotate_rows(qkv: Any, heads: int, head_dim: int, rows_cs: Any, b: int, t: int) -> Any:
    """The first ``heads`` heads of ``qkv`` [B, T, C] rotated, [B, heads, T, D] (contiguous), in
    one call of ``tokenloom._core.rotate_heads``: the same bits as :func:`_rotate` on those
    heads (its products and sum rounded as torch rounds them)."""
    from tokenloom import _core
    from tokenloom.runtime.swap import from_kernel, kernel_rows

    cos_rows, sin_rows, dt = rows_cs
    out = _core.rotate_heads(kernel_rows(qkv, int(qkv.shape[-1])), heads, head_dim, cos_rows, sin_rows, b)
    return from_kernel(out, dt, (b, heads, t, head_dim))


def lean_logits(model: Any, input_ids: Any, position_ids: Any, attention_mask: Any, cache: Any) -> Any:
    """The logits of ``model(input_ids=..., attention_mask=..., position_ids=..., cache)``,
    computed without the module machinery; appends T entries to ``cache`` as the model does.

    Args:
        model: a model :func:`lean_supported` accepts for this call.
        input_ids: LongTensor [B, T]; position_ids: LongTensor [B, T];
        attention_mask: [B or 1, 1, T, S + T] (additive float or bool), or None when T = 1;
        cache: the ``DynamicCache`` holding S entries per layer.

    Returns:
        Tensor [B, T, V] in the model's dtype, as ``model(...).logits``.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from tokenloom.device import is_accelerator
    from tokenloom.runtime.cpupack import group_step, step_call
    from tokenloom.runtime.kvcache import append_kv

    inner = model.model
    cfg = inner.config
    attention = ALL_ATTENTION_FUNCTIONS["sdpa"]
    # tokenloom's swapped linears skip their per-call checks (made here once: CPU, grad off)
    on_cpu = not is_accelerator(input_ids)
    call = step_call if on_cpu else (lambda mod: mod)
    if _TILED[0] is None:
        from tokenloom.runtime.layerops import TiledRMSNorm, TiledSiLU

        _TILED[:] = [TiledRMSNorm, TiledSiLU]
    b, t = int(input_ids.shape[0]), int(input_ids.shape[1])
    x = inner.embed_tokens(input_ids)
    cos, sin = inner.rotary_emb(x, position_ids)
    sin = _signed_sin(sin)  # once per step, for either rotation
    rows_cs = _rows_cos_sin(cos, sin, x, b, t) if on_cpu and _ROTARY_KERNEL[0] else None
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    layers = inner.layers[: cfg.num_hidden_layers]
    # each residual add runs with the norm after it (the next layer's input norm, the final one)
    h = _norm(layers[0].input_layernorm, x, on_cpu) if len(layers) else None
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        shape = (b, t, -1, attn.head_dim)
        # q / k / v packed as one weight (cpupack.TILED_GROUPS): one call, its heads side by
        # side, q's and k's rotated in one go (elementwise: the same bits); else one call each
        qkv = group_step((attn.q_proj, attn.k_proj, attn.v_proj), h) if on_cpu else None
        if qkv is None:
            outs = [call(mod)(h) for mod in (attn.q_proj, attn.k_proj, attn.v_proj)]
            q, k, v = (o.view(shape).transpose(1, 2) for o in outs)
            if rows_cs is not None and outs[0].dtype == outs[1].dtype == rows_cs[2]:
                q = _rotate_rows(outs[0], int(q.shape[1]), attn.head_dim, rows_cs, b, t)
                k = _rotate_rows(outs[1], int(k.shape[1]), attn.head_dim, rows_cs, b, t)
            else:
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        else:
            heads = qkv.view(shape).transpose(1, 2)
            nq, nk = attn.q_proj.out_features // attn.head_dim, attn.k_proj.out_features // attn.head_dim
            if rows_cs is not None and qkv.dtype == rows_cs[2]:  # one call, head-major out
                qk = _rotate_rows(qkv, nq + nk, attn.head_dim, rows_cs, b, t)
            else:
                qk = _rotate(heads[:, : nq + nk], cos, sin)
            q, k, v = qk[:, :nq], qk[:, nq:], heads[:, nq + nk :]
        k, v = append_kv(cache, i, k, v)
        o, _ = attention(attn, q, k, v, attention_mask, dropout=0.0, scaling=attn.scaling)
        mlp = layer.mlp
        x, h = _add_norm(layer.post_attention_layernorm, x, call(attn.o_proj)(o.reshape(b, t, -1).contiguous()), on_cpu)
        gate_up = group_step((mlp.gate_proj, mlp.up_proj), h) if on_cpu else None
        if gate_up is None:
            act = mlp.act_fn(call(mlp.gate_proj)(h)) * call(mlp.up_proj)(h)
        elif type(mlp.act_fn) is _TILED[1]:  # tokenloom's activation: act(gate) * up in one call
            act = mlp.act_fn.mul_step(gate_up, mlp.gate_proj.out_features)
        else:  # the activation on a contiguous gate, as on the separate call's output (its kernel path)
            gate, up = gate_up[..., : mlp.gate_proj.out_features].contiguous(), gate_up[..., mlp.gate_proj.out_features :]
            act = mlp.act_fn(gate) * up
        after = layers[i + 1].input_layernorm if i + 1 < len(layers) else inner.norm
        x, h = _add_norm(after, x, call(mlp.down_proj)(act), on_cpu)
    if h is None:  # no layers
        h = _norm(inner.norm, x, on_cpu)
    return call(model.lm_head)(h)


def step_logits(model: Any, cache: Any, input_ids: Any, position_ids: Any, attention_mask: Any) -> Any:
    """One step's logits [B, T, V] (the model's dtype), appending T entries to ``cache``: the
    lean forward where it applies, else ``model(...)``. The one place tokenloom's step forwards
    call the model."""
    from tokenloom.runtime.compat import cache_arg
    from tokenloom.runtime.gqa import one_forward

    with one_forward():
        if lean_supported(model, cache, attention_mask, int(input_ids.shape[1])):
            logits = lean_logits(model, input_ids, position_ids, attention_mask, cache)
            _COUNTS[model] = _COUNTS.get(model, 0) + 1
            return logits
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **cache_arg(model, cache)
        )
    return out.logits
