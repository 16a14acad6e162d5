"""A fused decoder forward for reward scoring on the CPU: Llama, Mistral, Qwen2, Qwen3.

Why not just call the transformers model: on this project's benchmark CPU (AMD EPYC, AVX-512) a
profile of the plain forward spent ~72% of its time in ``aten::mm``, which torch sends to MKL, and MKL
ran these shapes at ~210 GFLOP/s where oneDNN, with weights reordered once at load, ran ~470 GFLOP/s
(bench/bench_scoring.py has the end-to-end figures). So this module runs the same computation with:

- every projection through oneDNN's linear with pre-packed weights (``torch.ops.mkldnn``, the ops
  torch's own compiler emits on CPU), q/k/v fused into one matmul, SiLU, the gate*up product and the
  residual adds fused into the matmuls as oneDNN post-ops (no extra passes over activations);
- the last layer computed only where the reward is read: keys and values still cover every token, but
  queries, the output projection and the MLP run on one row per sequence;
- packed sequences (no padding), causal SDPA per sequence.

It reads the weights of the loaded transformers model (nothing is converted on disk) and falls back
to plain ``F.linear`` where oneDNN is missing. Scores equal the plain forward within fp32 rounding;
tests/unit/test_fused.py checks that per architecture. Any config this module does not understand makes
``FusedDecoder.build`` return None, and the engine keeps the transformers path.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

FUSABLE_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
GROUP_TOKENS = 2048


def onednn_available() -> bool:
    """oneDNN linear with packed weights works here (built in, and it runs)."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    try:
        w = torch.randn(8, 16)
        x = torch.randn(3, 16)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    except (RuntimeError, AttributeError) as exc:  # a torch built without it, or an unsupported CPU
        log.info("oneDNN linear unavailable (%s); fused path uses F.linear", exc)
        return False
    return bool(torch.allclose(out, F.linear(x, w), atol=1e-5, rtol=1e-5))


class Linear:
    """One projection; ``act``/``mul``/``add`` are fused into the matmul when oneDNN is used."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, onednn: bool) -> None:
        self.weight = weight.detach().contiguous()
        self.bias = None if bias is None else bias.detach().contiguous()
        self.onednn = onednn
        # The batch-size hint only picks oneDNN's blocked layout; any batch size runs with it.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, 256) if onednn else self.weight

    def __call__(self, x: torch.Tensor, *, silu: bool = False) -> torch.Tensor:
        if self.onednn:
            attr = "swish" if silu else "none"
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, attr, [], "")  # type: ignore[no-any-return]
        y = F.linear(x, self.weight, self.bias)
        return F.silu(y) if silu else y

    def times(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``linear(x) * other``."""
        if self.onednn and self.bias is None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, None, "mul")  # type: ignore[no-any-return]
        return F.linear(x, self.weight, self.bias) * other

    def plus(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``other + linear(x)``: a residual add."""
        if self.onednn and self.bias is None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, None, "add")  # type: ignore[no-any-return]
        return other + F.linear(x, self.weight, self.bias)


def _cat_linear(mods: Sequence[Any], onednn: bool) -> Linear:
    weight = torch.cat([m.weight for m in mods])
    biases = [m.bias for m in mods]
    if all(b is None for b in biases):
        return Linear(weight, None, onednn)
    bias = torch.cat(
        [b if b is not None else torch.zeros(m.weight.shape[0]) for m, b in zip(mods, biases, strict=True)]
    )
    return Linear(weight, bias, onednn)


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv: Linear
    q: Linear  # the last layer projects queries only at read rows, keys/values everywhere
    kv: Linear
    o: Linear
    gate: Linear
    up: Linear
    down: Linear
    q_norm: torch.Tensor | None  # Qwen3: RMSNorm over each head's q and k before rotary
    k_norm: torch.Tensor | None


class FusedDecoder:
    """The decoder stack + final norm of a loaded ``*ForSequenceClassification`` model, fused."""

    def __init__(self, base: Any, cfg: Any, onednn: bool) -> None:
        self.onednn = onednn
        self.embed = base.embed_tokens.weight
        self.rotary = base.rotary_emb
        self.norm = base.norm.weight
        self.eps = float(cfg.rms_norm_eps)
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        half = self.head_dim // 2
        # rotate_half(x) * sin == roll(x, half) * [-sin_lo, sin_hi]; one roll instead of split+neg+cat.
        self.sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(self.embed.dtype)
        self.layers = [self._layer(layer) for layer in base.layers]
        self.scale = float(base.layers[0].self_attn.scaling)

    def _layer(self, layer: Any) -> _Layer:
        a, m = layer.self_attn, layer.mlp
        qn, kn = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
        return _Layer(
            ln1=layer.input_layernorm.weight,
            ln2=layer.post_attention_layernorm.weight,
            qkv=_cat_linear([a.q_proj, a.k_proj, a.v_proj], self.onednn),
            q=_cat_linear([a.q_proj], self.onednn),
            kv=_cat_linear([a.k_proj, a.v_proj], self.onednn),
            o=_cat_linear([a.o_proj], self.onednn),
            gate=_cat_linear([m.gate_proj], self.onednn),
            up=_cat_linear([m.up_proj], self.onednn),
            down=_cat_linear([m.down_proj], self.onednn),
            q_norm=None if qn is None else qn.weight,
            k_norm=None if kn is None else kn.weight,
        )

    @classmethod
    def build(cls, model: Any, max_len: int) -> FusedDecoder | None:
        """The fused path for this model, or None (with the reason logged) if it does not apply."""
        cfg = model.config
        why = _unsupported(model, cfg, max_len)
        if why:
            log.info("fused CPU path off for %s: %s", getattr(cfg, "model_type", "?"), why)
            return None
        return cls(model.base_model, cfg, onednn=onednn_available())

    # ---------------------------------------------------------------- forward
    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + x.roll(self.head_dim // 2, -1) * sin  # x: [T, heads, D]; cos/sin: [T, 1, D]

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cu: Sequence[int], read: Sequence[int]
    ) -> torch.Tensor:
        """Hidden states after the final norm at ``read`` (flat indices), for packed sequences.

        input_ids, position_ids: [T]; cu: sequence boundaries (len N+1); read: N flat indices.
        Runs in groups of whole sequences of about GROUP_TOKENS: past that, matmul outputs outgrow
        the CPU caches and oneDNN's rate drops (~470 -> ~250 GFLOP/s measured for the MLP).
        """
        outs = []
        first = 0
        while first < len(read):
            last = first + 1
            while last < len(read) and cu[last + 1] - cu[first] <= GROUP_TOKENS:
                last += 1
            s, e = cu[first], cu[last]
            sub_cu = [c - s for c in cu[first : last + 1]]
            sub_read = [r - s for r in read[first:last]]
            outs.append(self._group(input_ids[s:e], position_ids[s:e], sub_cu, sub_read))
            first = last
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _group(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cu: Sequence[int], read: Sequence[int]
    ) -> torch.Tensor:
        n_tok, n_seq = int(input_ids.shape[0]), len(read)
        # Row counts are padded up to a few fixed sizes: oneDNN builds (and keeps) one kernel per
        # matmul shape, ~2.5 ms and ~0.6 MB each, so every distinct batch length would pay for its own.
        # Padding rows are never attended to and never read.
        t_pad, n_pad = bucket(n_tok), bucket(n_seq)
        input_ids = F.pad(input_ids, (0, t_pad - n_tok))
        position_ids = F.pad(position_ids, (0, t_pad - n_tok))
        x = F.embedding(input_ids, self.embed)
        cos, sin = self.rotary(x[None], position_ids[None])
        cos, sin = cos[0, :, None, :], (sin[0] * self.sign)[:, None, :]
        rows = torch.tensor([*read, *[read[-1]] * (n_pad - n_seq)], dtype=torch.long)
        heads, kvh, d = self.heads, self.kv_heads, self.head_dim
        gqa = heads != kvh
        spans = list(itertools.pairwise(cu))
        filler = [x.new_zeros(t_pad - n_tok, heads, d)]
        for layer in self.layers[:-1]:
            h = self._rms(x, layer.ln1)
            q, k, v = torch.split(layer.qkv(h).view(-1, heads + 2 * kvh, d), [heads, kvh, kvh], 1)
            q, k = self._qk(layer, q, k, cos, sin)
            outs = [_attend(q[s:e], k[s:e], v[s:e], self.scale, gqa, causal=True) for s, e in spans]
            x = layer.o.plus(torch.cat(outs + filler).view(-1, heads * d), x)
            x = self._mlp(layer, x)
        # Last layer: keys/values over every token, everything else at the read rows only.
        layer = self.layers[-1]
        h = self._rms(x, layer.ln1)
        k, v = torch.split(layer.kv(h).view(-1, 2 * kvh, d), [kvh, kvh], 1)
        q = layer.q(h[rows]).view(-1, heads, d)
        q, k = self._qk(layer, q, k, cos, sin, q_rows=rows)
        outs = [
            _attend(q[j : j + 1], k[s : r + 1], v[s : r + 1], self.scale, gqa, causal=False)
            for j, ((s, _), r) in enumerate(zip(spans, read, strict=True))
        ]
        outs.append(q.new_zeros(n_pad - n_seq, heads, d))
        x = layer.o.plus(torch.cat(outs).view(-1, heads * d), x[rows])
        x = self._mlp(layer, x)
        return self._rms(x[:n_seq], self.norm)

    def _qk(
        self,
        layer: _Layer,
        q: torch.Tensor,
        k: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        q_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if layer.q_norm is not None and layer.k_norm is not None:
            q, k = self._rms(q, layer.q_norm), self._rms(k, layer.k_norm)
        qcos, qsin = (cos, sin) if q_rows is None else (cos[q_rows], sin[q_rows])
        return self._rope(q, qcos, qsin), self._rope(k, cos, sin)

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        h = self._rms(x, layer.ln2)
        return layer.down.plus(layer.up.times(h, layer.gate(h, silu=True)), x)


def bucket(rows: int) -> int:
    """``rows`` rounded up to one of 8 sizes per power of two (at most 12.5% more, 16 at least)."""
    if rows <= 16:
        return 16
    step = 1 << max(rows.bit_length() - 4, 0)
    return -(-rows // step) * step


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, gqa: bool, *, causal: bool
) -> torch.Tensor:
    """One sequence's attention. q/k/v: [T, heads, D] -> [Tq, heads, D]."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        is_causal=causal,
        scale=scale,
        enable_gqa=gqa,
    )
    return out[0].transpose(0, 1)


def _unsupported(model: Any, cfg: Any, max_len: int) -> str:
    """Why the fused path cannot reproduce this model's forward exactly ('' if it can)."""
    if getattr(cfg, "model_type", None) not in FUSABLE_MODEL_TYPES:
        return "architecture not in " + ", ".join(sorted(FUSABLE_MODEL_TYPES))
    param = next(model.parameters())
    if param.device.type != "cpu":
        return "not on the CPU (the GPU path packs through transformers with varlen attention)"
    if param.dtype != torch.float32:
        # transformers' RMSNorm upcasts to fp32 inside; matching that in bf16 is not worth it on a CPU.
        return f"dtype {param.dtype} (fused only in float32)"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} (only silu is fused)"
    if getattr(model, "score", None) is None or not hasattr(model, "base_model"):
        return "no linear `score` head on a base model"
    window = getattr(cfg, "sliding_window", None)
    if window is not None and getattr(cfg, "use_sliding_window", True) and window < max_len:
        return "sliding-window attention"
    base = model.base_model
    needed = ("embed_tokens", "rotary_emb", "norm", "layers")
    if not all(hasattr(base, n) for n in needed):
        return "unexpected module layout"
    for layer in base.layers:
        a = layer.self_attn
        if not all(hasattr(a, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")):
            return "unexpected attention module layout"
        if not all(hasattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            return "unexpected MLP layout"
    return ""
