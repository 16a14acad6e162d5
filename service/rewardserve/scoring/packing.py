"""Padding-free packing: many sequences in one forward pass, attention kept inside each sequence.

Sequences are concatenated into one row with position ids restarted per sequence; the boundaries
(``cu_seqlens``, FlashAttention's convention) travel to every attention layer as a keyword argument.
An attention function registered with transformers' ``AttentionInterface`` reads them:

- CUDA in fp16/bf16: ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention varlen kernel, no
  padding at all);
- anything else (CPU, fp32 on CUDA: FlashAttention takes fp16/bf16 only, or a torch without varlen):
  one causal SDPA call per sequence, which is exact and cheap there.

Calls without boundaries (padded batches, warm-up) fall through to transformers' SDPA path with its
usual mask, so one model object serves every batch strategy.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_NAME = "rewardserve_varlen"
CU_SEQLENS_KW = "rewardserve_cu_seqlens"
MAX_LEN_KW = "rewardserve_max_seqlen"

# Architectures whose attention is plain causal softmax attention (no soft-capping, no sliding window
# by default), so the packed forward equals a per-sequence forward. Others take the padded path.
PACKABLE_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


@dataclass(frozen=True)
class Packed:
    """One packed batch, ready for the device."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T], restarting at 0 for each sequence
    cu_seqlens: torch.Tensor  # [N + 1] int32, sequence boundaries
    max_seqlen: int
    read_index: torch.Tensor  # [N] flat position whose hidden state is scored


@dataclass(frozen=True)
class Padded:
    """One right-padded batch, ready for the device."""

    input_ids: torch.Tensor  # [N, L]
    attention_mask: torch.Tensor  # [N, L]
    token_type_ids: torch.Tensor | None
    read_index: torch.Tensor  # [N] position (within the row) whose hidden state is scored


def read_position(ids: Sequence[int], pad_token_id: int | None) -> int:
    """Index of the token a sequence-classification head reads: the last one that is not padding.

    This matches transformers' own rule (rightmost token != pad_token_id), which matters when a
    model's pad token equals its EOS and the chat template ends in EOS: the reward is read at the
    token before, exactly as the model was trained and as ``model(**tokenizer(text))`` returns.
    """
    if pad_token_id is not None:
        for i in range(len(ids) - 1, -1, -1):
            if ids[i] != pad_token_id:
                return i
        return 0
    return len(ids) - 1


def pack(seqs: Sequence[Sequence[int]], pad_token_id: int | None, device: torch.device) -> Packed:
    """Concatenate sequences into one row with restarted positions."""
    lengths = [len(s) for s in seqs]
    flat = [t for s in seqs for t in s]
    positions = [p for n in lengths for p in range(n)]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    read = [cu[i] + read_position(s, pad_token_id) for i, s in enumerate(seqs)]
    return Packed(
        input_ids=torch.tensor([flat], dtype=torch.long, device=device),
        position_ids=torch.tensor([positions], dtype=torch.long, device=device),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=device),
        max_seqlen=max(lengths),
        read_index=torch.tensor(read, dtype=torch.long, device=device),
    )


def pad(
    seqs: Sequence[Sequence[int]],
    type_ids: Sequence[Sequence[int] | None],
    pad_token_id: int | None,
    device: torch.device,
) -> Padded:
    """Right-pad sequences into a rectangle; padding positions are masked out."""
    width = max(len(s) for s in seqs)
    fill = pad_token_id if pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), fill, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    types = None
    if any(t is not None for t in type_ids):
        types = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
        t = type_ids[row]
        if types is not None and t is not None:
            types[row, : len(t)] = torch.tensor(t, dtype=torch.long)
    read = torch.tensor([read_position(s, pad_token_id) for s in seqs], dtype=torch.long)
    return Padded(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        token_type_ids=None if types is None else types.to(device),
        read_index=read.to(device),
    )


def padded_cost(lengths: Sequence[int]) -> int:
    """Device cost of a padded batch: every row is as long as the longest."""
    return max(lengths, default=0) * len(lengths)


def packed_cost(lengths: Sequence[int]) -> int:
    """Device cost of a packed batch: only real tokens."""
    return sum(lengths)


def _varlen_kernel() -> Callable[..., Any] | None:
    """torch's FlashAttention varlen entry point, if this torch has one."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


_VARLEN = _varlen_kernel()
# The varlen signature changed across torch releases (is_causal in 2.10/2.11, window_size later);
# read it once so one code path serves both.
_VARLEN_PARAMS = frozenset(inspect.signature(_VARLEN).parameters) if _VARLEN is not None else frozenset()


# FlashAttention's varlen kernel computes in these dtypes only; fp32 on CUDA would fail in the kernel.
VARLEN_DTYPES = frozenset({torch.float16, torch.bfloat16})


def use_varlen_kernel(device_type: str, dtype: torch.dtype, available: bool = _VARLEN is not None) -> bool:
    """Whether a packed attention call on this device and dtype goes to the varlen kernel (else the
    exact per-sequence path)."""
    return available and device_type == "cuda" and dtype in VARLEN_DTYPES


def _cuda_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int, scale: float | None
) -> torch.Tensor:
    assert _VARLEN is not None
    kwargs: dict[str, Any] = {"scale": scale}
    if "window_size" in _VARLEN_PARAMS:
        kwargs["window_size"] = (-1, 0)  # causal
    else:
        kwargs["is_causal"] = True
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in _VARLEN_PARAMS:
            kwargs["enable_gqa"] = True
        else:  # older kernels want equal head counts
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    out = _VARLEN(q, k, v, cu, cu, max_len, max_len, **kwargs)
    result: torch.Tensor = out[0] if isinstance(out, tuple) else out
    return result


def _per_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: Sequence[int], scale: float | None
) -> torch.Tensor:
    """Exact fallback: causal SDPA on each sequence's slice. q/k/v: [1, H, T, D] -> [T, H, D]."""
    gqa = q.shape[1] != k.shape[1]
    outs = []
    for s, e in itertools.pairwise(cu):
        o = F.scaled_dot_product_attention(
            q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True, scale=scale, enable_gqa=gqa
        )
        outs.append(o)
    return torch.cat(outs, dim=2)[0].transpose(0, 1)


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: varlen when boundaries are given, SDPA otherwise."""
    cu = kwargs.get(CU_SEQLENS_KW)
    if cu is None:
        out, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
        return out, None
    max_len = int(kwargs[MAX_LEN_KW])
    if use_varlen_kernel(query.device.type, query.dtype):
        # [1, H, T, D] -> [T, H, D], the layout FlashAttention varlen expects.
        q, k, v = (x[0].transpose(0, 1).contiguous() for x in (query, key, value))
        out = _cuda_varlen(q, k, v, cu, max_len, scaling)
    else:
        out = _per_sequence(query, key, value, cu.tolist(), scaling)
    return out.unsqueeze(0), None  # [1, T, H, D], as transformers' attention functions return


def varlen_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """Mask function paired with ``varlen_attention``.

    A packed call passes no padding mask: the boundaries do the masking, so no [T, T] mask is built
    (it would cost T^2 memory for nothing). A padded call passes its padding mask: build SDPA's.
    """
    if kwargs.get("attention_mask") is None and kwargs.get("batch_size", 1) == 1:
        return None
    return sdpa_mask(*args, **kwargs)


def register() -> str:
    """Register the attention + mask functions with transformers (idempotent); returns the name."""
    AttentionInterface.register(ATTN_NAME, varlen_attention)
    AttentionMaskInterface.register(ATTN_NAME, varlen_mask)
    return ATTN_NAME
