"""The layer stack of the fused CPU forward, written so TorchScript can compile it (see fused.py).

Why TorchScript: a served forward shares the process with the event loop, the tokenizer thread and
the batch builder, and every Python-level torch call must take the GIL first. A py-spy profile of the
server under the benchmark load had the compute thread waiting for the GIL ~21% of the time, which
left a core idle. A scripted module runs its whole graph in C++ with the GIL released. The same class
also runs as plain Python (``scripted=False``), which the tests compare against.

No ``from __future__ import annotations`` here: TorchScript reads the annotations at compile time.
"""

import torch
import torch.nn.functional as F


def _lin(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, onednn: bool) -> torch.Tensor:
    if onednn:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")  # type: ignore[no-any-return]
    return F.linear(x, w, b)


def _lin_silu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, onednn: bool) -> torch.Tensor:
    if onednn:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "swish", [], "")  # type: ignore[no-any-return]
    return F.silu(F.linear(x, w, b))


def _lin_mul(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, onednn: bool, other: torch.Tensor
) -> torch.Tensor:
    """linear(x) * other, the product fused into the matmul as a oneDNN post-op."""
    if onednn:
        return torch.ops.mkldnn._linear_pointwise(x, other, w, b, "mul")  # type: ignore[no-any-return]
    return F.linear(x, w, b) * other


def _lin_add(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, onednn: bool, other: torch.Tensor
) -> torch.Tensor:
    """other + linear(x): a residual add fused into the matmul."""
    if onednn:
        return torch.ops.mkldnn._linear_pointwise(x, other, w, b, "add")  # type: ignore[no-any-return]
    return other + F.linear(x, w, b)


class Stack(torch.nn.Module):
    """Decoder layers + final norm over packed, row-padded tokens; see ``forward``.

    Weights per layer, in lists indexed by layer: ``w`` maps a projection name (qkv, q, kv, o, gate,
    up, down) to its weight (oneDNN-packed when ``onednn``), ``b`` to its bias or None.
    """

    # Declared for TorchScript, which cannot infer a list type from lists holding None.
    w: dict[str, list[torch.Tensor]]
    b: dict[str, list[torch.Tensor | None]]
    norms: dict[str, list[torch.Tensor]]

    def __init__(
        self,
        w: dict[str, list[torch.Tensor]],
        b: dict[str, list[torch.Tensor | None]],
        norms: dict[str, list[torch.Tensor]],
        final_norm: torch.Tensor,
        heads: int,
        kv_heads: int,
        head_dim: int,
        scale: float,
        eps: float,
        onednn: bool,
        qk_norm: bool,
    ) -> None:
        super().__init__()
        self.w = w
        self.b = b
        self.norms = norms  # ln1, ln2 and (Qwen3) q_norm, k_norm
        self.final_norm = final_norm
        self.heads = heads
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.eps = eps
        self.onednn = onednn
        self.qk_norm = qk_norm
        self.n_layers = len(w["qkv"])

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, [x.shape[-1]], weight, self.eps)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # rotate_half(x) * sin == roll(x, D/2) * [-sin_lo, sin_hi]; the sign is folded into ``sin``.
        return x * cos + torch.roll(x, self.head_dim // 2, -1) * sin

    def _qk(
        self,
        i: int,
        q: torch.Tensor,
        k: torch.Tensor,
        qcos: torch.Tensor,
        qsin: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.qk_norm:
            q = self._rms(q, self.norms["q_norm"][i])
            k = self._rms(k, self.norms["k_norm"][i])
        return self._rope(q, qcos, qsin), self._rope(k, cos, sin)

    def _mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        h = self._rms(x, self.norms["ln2"][i])
        g = _lin_silu(h, self.w["gate"][i], self.b["gate"][i], self.onednn)
        m = _lin_mul(h, self.w["up"][i], self.b["up"][i], self.onednn, g)
        return _lin_add(m, self.w["down"][i], self.b["down"][i], self.onednn, x)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        # 4-D [1, heads, T, D]: torch's CPU flash kernel takes only that (3-D falls back to math).
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=self.scale, enable_gqa=self.heads != self.kv_heads
        )

    def _out(self, i: int, outs: list[torch.Tensor], residual: torch.Tensor) -> torch.Tensor:
        joined = torch.cat(outs, 2)[0]
        flat = joined.transpose(0, 1).reshape(joined.shape[1], self.heads * self.head_dim)
        return _lin_add(flat, self.w["o"][i], self.b["o"][i], self.onednn, residual)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cu: list[int],
        read: list[int],
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """Final-norm hidden states at ``rows``.

        x: [T_pad, hidden] embeddings, the real tokens first (``cu[-1]`` of them), padding rows after;
        cos/sin: [T_pad, 1, D]; cu: sequence boundaries; read: each sequence's read index (flat);
        rows: ``read`` padded to the output's row count by repeating its last entry.
        """
        heads, kvh, d = self.heads, self.kv_heads, self.head_dim
        n_tok, t_pad = cu[-1], x.shape[0]
        for i in range(self.n_layers - 1):
            h = self._rms(x, self.norms["ln1"][i])
            qkv = _lin(h, self.w["qkv"][i], self.b["qkv"][i], self.onednn).view(-1, heads + 2 * kvh, d)
            q, k, v = torch.split(qkv, [heads, kvh, kvh], 1)
            q, k = self._qk(i, q, k, cos, sin, cos, sin)
            q, k, v = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
            outs: list[torch.Tensor] = []
            for j in range(len(read)):
                s, e = cu[j], cu[j + 1]
                outs.append(self._attend(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], True))
            outs.append(x.new_zeros(1, heads, t_pad - n_tok, d))
            x = self._out(i, outs, x)
            x = self._mlp(i, x)
        # Last layer: keys/values over every token, everything else at the read rows only.
        i = self.n_layers - 1
        h = self._rms(x, self.norms["ln1"][i])
        kv = _lin(h, self.w["kv"][i], self.b["kv"][i], self.onednn).view(-1, 2 * kvh, d)
        k, v = torch.split(kv, [kvh, kvh], 1)
        q = _lin(h[rows], self.w["q"][i], self.b["q"][i], self.onednn).view(-1, heads, d)
        q, k = self._qk(i, q, k, cos[rows], sin[rows], cos, sin)
        q, k, v = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
        outs = []
        for j in range(len(read)):
            s, r = cu[j], read[j]
            outs.append(self._attend(q[:, :, j : j + 1], k[:, :, s : r + 1], v[:, :, s : r + 1], False))
        outs.append(x.new_zeros(1, heads, rows.shape[0] - len(read), d))
        x = self._out(i, outs, x[rows])
        x = self._mlp(i, x)
        return self._rms(x, self.final_norm)
