"""The compute layer: load a reward model, turn inputs into tokens, run batches, read rewards.

Knows nothing of HTTP or asyncio. The batcher calls ``prepare`` (host work: build tensors) and
``run`` (device work) from two different threads, so ``prepare`` of batch N+1 overlaps ``run`` of
batch N. Tokenizing happens in one dedicated thread (``encode``): HF fast tokenizers are not safe to
call from several threads at once ("Already borrowed").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from rewardserve.errors import InputError, OutOfMemory
from rewardserve.scoring import packing
from rewardserve.scoring.fused import FusedDecoder
from rewardserve.scoring.types import Encoded, ModelInfo, ScoreInput, ScoreOutput

if TYPE_CHECKING:
    # Type names only: the compute layer must import with torch + transformers alone (a GPU host
    # running bench/bench_gpu.py has no pydantic); tests/unit/test_compute_imports.py checks it.
    from rewardserve.config import BatchStrategy, Settings

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_MAX_DEFAULT_LEN = 32_768
Strategy = Literal["packed", "padded", "sequential"]


@dataclass(frozen=True)
class Prepared:
    """A batch in device tensors, in the shape the strategy runs."""

    strategy: Strategy
    items: list[Encoded]
    packed: packing.Packed | None = None
    padded: packing.Padded | None = None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device (REWARDSERVE_DEVICE) is cuda, but torch sees no CUDA device: use cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


class RewardEngine:
    """One loaded reward model: tokenizer, chat template, batch strategy, heads."""

    # What ``load`` instantiates; subclasses for other heads (scoring/prm.py) name theirs.
    auto_model_class: Any = AutoModelForSequenceClassification

    def __init__(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        device: torch.device,
        max_input_tokens: int,
        strategy: BatchStrategy,
        truncation_side: Literal["left", "right"] = "left",
        score_activation: Literal["none", "sigmoid"] = "none",
        objective: str | None = None,
        fused_cpu: bool = False,
        workers: int = 1,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.workers = workers  # batches run at once (the batcher's runners, score_encoded's threads)
        self.max_input_tokens = max_input_tokens
        self.truncation_side = truncation_side
        self.score_activation = score_activation
        cfg = model.config
        self.model_type: str = str(getattr(cfg, "model_type", "unknown"))
        self.pad_token_id: int | None = cfg.pad_token_id
        if self.pad_token_id is None and tokenizer.pad_token_id is not None:
            self.pad_token_id = int(tokenizer.pad_token_id)
        # Decoder reward heads (LlamaForSequenceClassification & co.) are a linear `score` layer on the
        # base model's hidden states; reading those ourselves lets every strategy pick the same token.
        self._base: Any = getattr(model, model.base_model_prefix, None)
        self._head: Any = getattr(model, "score", None)
        self.decoder_head = self._head is not None and self._base is not None and not cfg.is_encoder_decoder
        self.packable = self.decoder_head and self.model_type in packing.PACKABLE_MODEL_TYPES
        window = getattr(cfg, "sliding_window", None)
        if window is not None and getattr(cfg, "use_sliding_window", True) and window < max_input_tokens:
            self.packable = False  # the per-sequence kernels here are full causal, not windowed
        self.fused = FusedDecoder.build(model, max_input_tokens) if fused_cpu and self.packable else None
        self.strategy: Strategy = self._choose_strategy(strategy)
        labels = cfg.num_labels
        id2label = getattr(cfg, "id2label", None) or {}
        self.objectives = tuple(str(id2label.get(i, f"objective_{i}")) for i in range(labels))
        self._objective_index: int | None = None
        if objective is not None:
            if objective not in self.objectives:
                raise ValueError(f"objective {objective!r} is not one of the model's {list(self.objectives)}")
            self._objective_index = self.objectives.index(objective)
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.info = ModelInfo(
            name=name,
            architecture=str((getattr(cfg, "architectures", None) or [type(model).__name__])[0]),
            model_type=self.model_type,
            max_input_tokens=max_input_tokens,
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
            device=str(device),
            head="scalar" if labels == 1 else "multi_objective",
            objectives=self.objectives if labels > 1 else (),
            batch_strategy=self.strategy,
            has_chat_template=self.has_chat_template,
            kernels=self._kernels(),
        )

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: Path, settings: Settings, *, name: str | None = None) -> RewardEngine:
        """Load a local reward model directory (safetensors only; remote code only when allowed)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory not found: {path}")
        if not any(path.glob("*.safetensors")):
            raise ValueError(
                f"{path} has no *.safetensors weights; only safetensors are loaded (pickled .bin files can "
                "run code on load). Convert with `model.save_pretrained(dir, safe_serialization=True)`."
            )
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        workers, threads = compute_layout(settings, device)
        if threads is not None:
            torch.set_num_threads(threads)
        attn = packing.register()
        common: dict[str, Any] = {
            "trust_remote_code": settings.trust_remote_code,
            "local_files_only": True,
            "use_safetensors": True,
        }
        model_type = _peek_model_type(path, settings.trust_remote_code)
        kwargs: dict[str, Any] = dict(common, dtype=dtype)
        if model_type in packing.PACKABLE_MODEL_TYPES:
            kwargs["attn_implementation"] = attn
        # Straight to the device: an 8B model loaded to the CPU first costs 16 GB of host memory and a
        # second copy over PCIe.
        model = cls.auto_model_class.from_pretrained(str(path), device_map=device, **kwargs)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), trust_remote_code=settings.trust_remote_code, local_files_only=True
        )
        max_len = settings.max_input_tokens or _model_max_len(model.config, tokenizer)
        engine = cls(
            model,
            tokenizer,
            name=name or settings.model_name,
            device=device,
            max_input_tokens=max_len,
            strategy=settings.batch_strategy,
            truncation_side=settings.truncation_side,
            score_activation=settings.score_activation,
            objective=settings.objective,
            fused_cpu=settings.fused_cpu,
            workers=workers,
        )
        if settings.torch_compile and engine.fused is not None:
            log.info("--torch-compile ignored: the fused CPU forward already runs this model")
        elif settings.torch_compile and engine.decoder_head:
            # dynamic=True: one graph for every sequence length instead of one compile per length.
            engine._base = torch.compile(engine._base, dynamic=True)
        return engine

    def _choose_strategy(self, wanted: BatchStrategy) -> Strategy:
        if wanted == "packed" and not self.packable:
            log.warning("%s cannot be packed (encoder or other attention); using padded", self.model_type)
            return "padded"
        if wanted != "auto":
            return wanted
        # Measured on the benchmark CPU: through transformers' modules, one sequence at a time beats
        # padded and packed batches (16.8k vs 6.5k / 15-17k tok/s); through the fused forward, packed
        # batches beat one at a time (35k vs 26k: bigger matmuls). On a GPU, packing fills the card.
        if self.device.type == "cpu":
            return "packed" if self.fused is not None else "sequential"
        return "packed" if self.packable else "padded"

    def _kernels(self) -> str:
        if self.fused is None:
            return "transformers"
        return "fused-onednn" if self.fused.onednn else "fused"

    # ---------------------------------------------------------------- tokenizing
    def encode(self, inp: ScoreInput, *, truncate: bool) -> Encoded:
        """Tokenize one input exactly as the reward model was trained to see it."""
        tok = self.tokenizer
        type_ids: list[int] | None = None
        pair = self._as_pair(inp)
        if self.has_chat_template and inp.text is None:
            msgs = self._as_messages(inp)
            try:
                text = tok.apply_chat_template(msgs, tokenize=False)
            except Exception as exc:  # jinja's raise_exception (roles not alternating...): the caller's input
                raise InputError(
                    f"the model's chat template rejected these messages: {_first_line(exc)}; check the "
                    "roles and their order, or send the rendered conversation as text"
                ) from None
            ids = list(tok(text, add_special_tokens=False)["input_ids"])
        elif inp.text is not None:
            # With a chat template, raw text already carries its special tokens (OpenRLHF sends
            # query = prompt + response as rendered); without one, the tokenizer's framing applies.
            enc = tok(inp.text, add_special_tokens=not self.has_chat_template)
            ids, type_ids = list(enc["input_ids"]), _type_ids(enc)
        else:
            assert pair is not None
            enc = tok(pair[0], pair[1])
            ids, type_ids = list(enc["input_ids"]), _type_ids(enc)
        if not ids:
            raise InputError("input is empty after tokenization")
        if len(ids) <= self.max_input_tokens:
            return Encoded(ids, type_ids, False)
        if not truncate:
            raise InputError(
                f"input has {len(ids)} tokens, more than this model's limit of {self.max_input_tokens}; "
                'shorten it or send "truncate": true'
            )
        return self._truncate(inp, ids, type_ids, pair)

    def _truncate(
        self, inp: ScoreInput, ids: list[int], type_ids: list[int] | None, pair: tuple[str, str] | None
    ) -> Encoded:
        limit = self.max_input_tokens
        if not self.has_chat_template:
            # Let the tokenizer cut so its [CLS]/[SEP] framing survives.
            kw: dict[str, Any] = {"truncation": True, "max_length": limit}
            old_side = self.tokenizer.truncation_side
            self.tokenizer.truncation_side = self.truncation_side
            try:
                if inp.text is not None:
                    enc = self.tokenizer(inp.text, **kw)
                else:
                    assert pair is not None
                    enc = self.tokenizer(pair[0], pair[1], **kw)
            finally:
                self.tokenizer.truncation_side = old_side
            return Encoded(list(enc["input_ids"]), _type_ids(enc), True)
        cut = ids[-limit:] if self.truncation_side == "left" else ids[:limit]
        return Encoded(cut, None, True)

    def _as_messages(self, inp: ScoreInput) -> list[dict[str, str]]:
        if inp.messages is not None:
            return [{"role": m.role, "content": m.content} for m in inp.messages]
        return [
            {"role": "user", "content": inp.prompt or ""},
            {"role": "assistant", "content": inp.response or ""},
        ]

    @staticmethod
    def _as_pair(inp: ScoreInput) -> tuple[str, str] | None:
        """Encoder models without a chat template see (context, last turn) as a sentence pair."""
        if inp.messages is not None:
            *ctx, last = inp.messages
            return "\n".join(m.content for m in ctx), last.content
        if inp.text is None:
            return inp.prompt or "", inp.response or ""
        return None

    # ---------------------------------------------------------------- batches
    def batch_cost(self, lengths: Sequence[int]) -> int:
        if self.strategy == "padded":
            return packing.padded_cost(lengths)
        return packing.packed_cost(lengths)

    def prepare(self, items: list[Encoded]) -> Prepared:
        """Host side of a batch: build the tensors (runs while the previous batch computes)."""
        seqs = [e.input_ids for e in items]
        if self.strategy == "packed":
            return Prepared("packed", items, packed=packing.pack(seqs, self.pad_token_id, self.device))
        if self.strategy == "padded":
            types = [e.token_type_ids for e in items]
            return Prepared("padded", items, padded=packing.pad(seqs, types, self.pad_token_id, self.device))
        return Prepared("sequential", items)

    def run(self, batch: Prepared) -> list[ScoreOutput]:
        """Device side of a batch. CUDA out-of-memory becomes OutOfMemory so the batcher splits."""
        try:
            with torch.inference_mode():
                rows = self._forward(batch)
                if self.score_activation == "sigmoid":
                    rows = torch.sigmoid(rows)
                # One device->host copy for the whole batch (a .tolist() per row syncs once per row).
                values: list[list[float]] = rows.cpu().tolist()
        except torch.cuda.OutOfMemoryError as exc:
            message = str(exc)
        else:
            return [self._output(v, e) for v, e in zip(values, batch.items, strict=True)]
        # Out of the `except` on purpose: inside it, the OOM's traceback still holds the failed
        # forward's frames and so its activations; freeing the cache or raising from there (`raise ..
        # from exc` chains it) would keep them alive while the batcher runs the halves.
        if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            torch.cuda.empty_cache()
        raise OutOfMemory(message)

    def score_encoded(
        self, items: Sequence[Encoded], max_batch_tokens: int, max_rows: int
    ) -> list[ScoreOutput]:
        """Score without the batcher (bulk jobs, benchmarks): chunk by budget, ``workers`` chunks at
        once, results in input order."""
        chunks: list[list[Encoded]] = []
        chunk: list[Encoded] = []
        for item in items:
            lengths = [e.n_tokens for e in chunk] + [item.n_tokens]
            if chunk and (self.batch_cost(lengths) > max_batch_tokens or len(chunk) >= max_rows):
                chunks.append(chunk)
                chunk = []
            chunk.append(item)
        if chunk:
            chunks.append(chunk)
        if self.workers == 1 or len(chunks) == 1:
            return [out for c in chunks for out in self.run(self.prepare(c))]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="rewardserve-score") as pool:
            return [out for outs in pool.map(lambda c: self.run(self.prepare(c)), chunks) for out in outs]

    def warmup(self) -> None:
        """One small forward per shape, so the first client request is not the slow one."""
        vocab = int(getattr(self.model.config, "vocab_size", 2) or 2)
        ids = [i % vocab for i in range(1, 17)]
        self.run(self.prepare([Encoded(ids), Encoded(ids + ids)]))

    def _forward(self, batch: Prepared) -> torch.Tensor:
        # use_cache=False everywhere: a reward forward never decodes, and a KV cache would copy every
        # layer's keys and values for nothing (seen in a profile of the CPU server).
        if batch.strategy == "packed":
            p = batch.packed
            assert p is not None
            if self.fused is not None:
                read = p.read_index.tolist()
                final = self.fused.forward(p.input_ids[0], p.position_ids[0], p.cu_seqlens.tolist(), read)
                return self._score(final)
            hidden = self._base(
                input_ids=p.input_ids,
                position_ids=p.position_ids,
                use_cache=False,
                **{packing.CU_SEQLENS_KW: p.cu_seqlens, packing.MAX_LEN_KW: p.max_seqlen},
            ).last_hidden_state
            return self._score(hidden[0, p.read_index])
        if batch.strategy == "padded":
            d = batch.padded
            assert d is not None
            if self.decoder_head:
                hidden = self._base(
                    input_ids=d.input_ids, attention_mask=d.attention_mask, use_cache=False
                ).last_hidden_state
                rows = torch.arange(hidden.shape[0], device=hidden.device)
                return self._score(hidden[rows, d.read_index])
            kw: dict[str, Any] = {"attention_mask": d.attention_mask}
            if d.token_type_ids is not None:
                kw["token_type_ids"] = d.token_type_ids
            return self.model(input_ids=d.input_ids, **kw).logits.float()  # type: ignore[no-any-return]
        return torch.cat([self._forward_one(e) for e in batch.items])

    def _score(self, hidden: torch.Tensor) -> torch.Tensor:
        """The reward head in fp32 on the (bf16) hidden states it reads: a bf16 head would round
        rewards to bf16 steps (~0.03 near |r| = 5), enough to flip close pairs. One row per sequence,
        so the cast costs nothing."""
        head = self._head
        bias = head.bias.float() if head.bias is not None else None
        return F.linear(hidden.float(), head.weight.float(), bias)

    def _forward_one(self, e: Encoded) -> torch.Tensor:
        ids = torch.tensor([e.input_ids], dtype=torch.long, device=self.device)
        at = packing.read_position(e.input_ids, self.pad_token_id)
        if self.fused is not None:
            positions = torch.arange(len(e.input_ids))
            return self._score(self.fused.forward(ids[0], positions, [0, len(e.input_ids)], [at]))
        if self.decoder_head:
            hidden = self._base(input_ids=ids, use_cache=False).last_hidden_state
            return self._score(hidden[:, at])
        kw: dict[str, Any] = {}
        if e.token_type_ids is not None:
            kw["token_type_ids"] = torch.tensor([e.token_type_ids], dtype=torch.long, device=self.device)
        return self.model(input_ids=ids, **kw).logits.float()  # type: ignore[no-any-return]

    def _output(self, row: list[float], e: Encoded) -> ScoreOutput:
        values = tuple(float(v) for v in row)
        if len(values) == 1:
            score = values[0]
        elif self._objective_index is not None:
            score = values[self._objective_index]
        else:
            score = sum(values) / len(values)
        return ScoreOutput(score=score, values=values, tokens=e.n_tokens, truncated=e.truncated)


def compute_layout(settings: Settings, device: torch.device) -> tuple[int, int | None]:
    """(batches run at once, torch threads to set or None) for these settings on this device."""
    if device.type != "cpu":
        return settings.compute_workers or 1, settings.torch_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = settings.compute_workers or min(2, cores)
    threads = settings.torch_threads or max(1, cores // workers)
    return workers, threads


def _type_ids(enc: Any) -> list[int] | None:
    t = enc.get("token_type_ids")
    return list(t) if t is not None else None


def _peek_model_type(path: Path, trust_remote_code: bool) -> str:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)
    return str(getattr(cfg, "model_type", ""))


def _model_max_len(cfg: Any, tokenizer: PreTrainedTokenizerBase) -> int:
    candidates = [getattr(cfg, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    known = [int(c) for c in candidates if isinstance(c, int) and 0 < c < 10_000_000]
    return min([*known, _MAX_DEFAULT_LEN])


def _first_line(exc: BaseException) -> str:
    """An exception's message, one line, bounded (it is shown to the client)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
