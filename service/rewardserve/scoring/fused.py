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
tests/integration/test_engine_invariant.py and test_fused.py check that per architecture. Any
config this module does not understand makes ``FusedDecoder.build`` return None, and the engine
keeps the transformers path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rewardserve.scoring.fused_stack import Stack

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


def _projection(mods: Sequence[Any], onednn: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for the given linear modules stacked on their output dimension."""
    weight = torch.cat([m.weight.detach() for m in mods]).contiguous()
    bias = None
    if any(m.bias is not None for m in mods):
        parts = [m.bias.detach() if m.bias is not None else torch.zeros(m.weight.shape[0]) for m in mods]
        bias = torch.cat(parts).contiguous()
    if onednn:
        # The batch-size hint only picks oneDNN's blocked layout; any batch size runs with it.
        weight = torch.ops.mkldnn._reorder_linear_weight(weight, 256)
    return weight, bias


class FusedDecoder:
    """The decoder stack + final norm of a loaded ``*ForSequenceClassification`` model, fused."""

    def __init__(self, base: Any, cfg: Any, onednn: bool, script: bool = True) -> None:
        self.onednn = onednn
        self.embed = base.embed_tokens.weight
        self.rotary = base.rotary_emb
        heads = int(cfg.num_attention_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        half = self.head_dim // 2
        # rotate_half(x) * sin == roll(x, half) * [-sin_lo, sin_hi]; one roll instead of split+neg+cat.
        self.sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(self.embed.dtype)
        w: dict[str, list[torch.Tensor]] = {}
        b: dict[str, list[torch.Tensor | None]] = {}
        norms: dict[str, list[torch.Tensor]] = {"ln1": [], "ln2": []}
        qk_norm = all(hasattr(layer.self_attn, "q_norm") for layer in base.layers)
        if qk_norm:  # Qwen3: RMSNorm over each head's q and k before rotary
            norms["q_norm"], norms["k_norm"] = [], []
        for layer in base.layers:
            a, m = layer.self_attn, layer.mlp
            projections = {
                "qkv": [a.q_proj, a.k_proj, a.v_proj],
                "q": [a.q_proj],  # the last layer projects queries only at read rows
                "kv": [a.k_proj, a.v_proj],
                "o": [a.o_proj],
                "gate": [m.gate_proj],
                "up": [m.up_proj],
                "down": [m.down_proj],
            }
            for name, mods in projections.items():
                weight, bias = _projection(mods, onednn)
                w.setdefault(name, []).append(weight)
                b.setdefault(name, []).append(bias)
            norms["ln1"].append(layer.input_layernorm.weight.detach())
            norms["ln2"].append(layer.post_attention_layernorm.weight.detach())
            if qk_norm:
                norms["q_norm"].append(a.q_norm.weight.detach())
                norms["k_norm"].append(a.k_norm.weight.detach())
        stack = Stack(
            w,
            b,
            norms,
            base.norm.weight.detach(),
            heads=heads,
            kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
            head_dim=self.head_dim,
            scale=float(base.layers[0].self_attn.scaling),
            eps=float(cfg.rms_norm_eps),
            onednn=onednn,
            qk_norm=qk_norm,
        )
        self.stack: Any = stack
        self.scripted = False
        if script:
            try:
                self.stack = torch.jit.script(stack)
                self.scripted = True
            except Exception as exc:  # a torch without TorchScript runs the same module as Python
                log.warning("TorchScript could not compile the fused stack (%s); running it as Python", exc)

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
    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cu: Sequence[int], read: Sequence[int]
    ) -> torch.Tensor:
        """Hidden states after the final norm at ``read`` (flat indices), for packed sequences.

        input_ids, position_ids: [T]; cu: sequence boundaries (len N+1); read: N flat indices.
        Runs in groups of whole sequences of about GROUP_TOKENS: 4k- and 8k-token groups measured no
        faster on the benchmark model and held more memory, and a [4096, 256] x [256, 2048] matmul
        already ran at ~250 GFLOP/s where smaller ones ran ~470 (outputs outgrowing the caches).
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
        hidden: torch.Tensor = self.stack(x, cos, sin, list(cu), list(read), rows)
        return hidden[:n_seq]


def bucket(rows: int) -> int:
    """``rows`` rounded up to one of 8 sizes per power of two (at most 12.5% more, 16 at least)."""
    if rows <= 16:
        return 16
    step = 1 << max(rows.bit_length() - 4, 0)
    return -(-rows // step) * step


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
