"""Process reward models: a probability per reasoning step, read at each step separator token.

A PRM (Qwen2.5-Math-PRM's layout) is a token-classification model with two labels. The assistant turn
is the steps, each followed by the separator token, rendered through the model's chat template; the
step score is softmax(logits)[1] at every separator token. Everything else (loading, batch
strategies, packing, the batcher) is the reward engine's: this subclass changes what is encoded and
which hidden states the head reads, and leaves one score per input (the min of its steps) plus the
step scores themselves.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoModelForTokenClassification

from rewardserve.config import Settings
from rewardserve.errors import InputError, OutOfMemory
from rewardserve.scoring import packing
from rewardserve.scoring.engine import Prepared, RewardEngine
from rewardserve.scoring.types import Encoded, ScoreInput, ScoreOutput

DEFAULT_SEPARATOR = "<extra_0>"  # Qwen2.5-Math-PRM's step tag
# How a response without separators splits into steps: at blank lines, the usual step boundary of
# math solutions (and how Qwen2.5-Math-PRM's examples are split).
STEP_BREAK = "\n\n"


class PRMEngine(RewardEngine):
    """A 2-label token-classification model scored at every step separator."""

    auto_model_class: Any = AutoModelForTokenClassification

    def __init__(self, model: Any, tokenizer: Any, **kwargs: Any) -> None:
        # The fused CPU forward computes the last layer at one token per sequence; a PRM reads many.
        kwargs["fused_cpu"] = False
        super().__init__(model, tokenizer, **kwargs)
        labels = int(model.config.num_labels)
        if labels != 2:
            raise ValueError(
                f"{self.info.name}: a process reward model needs a 2-label token-classification head "
                f"(label 1 = the step is good, as Qwen2.5-Math-PRM defines it); this one has {labels}. "
                "Declare it with kind: model if it is an outcome reward model."
            )
        self.info = dataclasses.replace(self.info, head="prm", objectives=())
        self.separator = DEFAULT_SEPARATOR
        self.separator_id = -1

    @classmethod
    def load(
        cls,
        path: Path,
        settings: Settings,
        *,
        name: str | None = None,
        step_separator: str = DEFAULT_SEPARATOR,
    ) -> PRMEngine:
        engine = cast(PRMEngine, super().load(path, settings, name=name))
        engine.set_separator(step_separator)
        return engine

    def set_separator(self, separator: str) -> None:
        """Use ``separator`` as the step tag; it must be exactly one token of the tokenizer."""
        ids = list(self.tokenizer(separator, add_special_tokens=False)["input_ids"])
        if len(ids) != 1:
            raise ValueError(
                f"{self.info.name}: step_separator {separator!r} is not one token of this model's tokenizer "
                f"(it encodes to {len(ids)} tokens). Set step_separator to the tag the PRM was trained "
                "with (Qwen2.5-Math-PRM: <extra_0>), or add it to the tokenizer as a special token."
            )
        self.separator, self.separator_id = separator, ids[0]

    # ---------------------------------------------------------------- tokenizing
    def encode(self, inp: ScoreInput, *, truncate: bool) -> Encoded:
        tok = self.tokenizer
        if inp.text is not None:
            ids = list(tok(inp.text, add_special_tokens=not self.has_chat_template)["input_ids"])
        else:
            if not self.has_chat_template:
                raise InputError(
                    'this process reward model has no chat template; send {"text": ...} with a '
                    f"{self.separator} after each step"
                )
            text = tok.apply_chat_template(self._step_messages(inp), tokenize=False)
            ids = list(tok(text, add_special_tokens=False)["input_ids"])
        if self.separator_id not in ids:
            raise InputError(f"no step to score: the input holds no step separator {self.separator!r}")
        if len(ids) > self.max_input_tokens:
            # Cutting would drop steps (or the question they answer) and score a different chain.
            raise InputError(
                f"input has {len(ids)} tokens, more than this model's limit of {self.max_input_tokens}; a "
                "process reward model scores every step, so it does not truncate: send fewer steps"
            )
        return Encoded(ids, None, False)

    def _step_messages(self, inp: ScoreInput) -> list[dict[str, str]]:
        """The conversation with its last assistant turn written as steps + separators."""
        sep = self.separator
        if inp.messages is not None:
            context = [{"role": m.role, "content": m.content} for m in inp.messages]
        else:
            context = [{"role": "user", "content": inp.prompt or ""}]
        if inp.steps is not None:
            steps = list(inp.steps)
        else:
            if inp.messages is not None:
                *context, last = context
                if last["role"] != "assistant":
                    raise InputError("the last message must be the assistant turn that holds the steps")
                answer = last["content"]
            else:
                answer = inp.response or ""
            if sep in answer:  # already tagged by the caller: keep it exactly
                return [*context, {"role": "assistant", "content": answer}]
            steps = [s for s in answer.split(STEP_BREAK) if s.strip()]
        if not steps:
            raise InputError("no step to score: steps is empty")
        for i, step in enumerate(steps):
            if sep in step:
                raise InputError(f"steps[{i}] contains the step separator {sep!r}; it would split the step")
        return [*context, {"role": "assistant", "content": "".join(s + sep for s in steps)}]

    # ---------------------------------------------------------------- batches
    def run(self, batch: Prepared) -> list[ScoreOutput]:
        try:
            with torch.inference_mode():
                logits = self._step_logits(batch)
                # One softmax and one device->host copy for the whole batch.
                probs = logits.float().softmax(dim=-1)[:, 1].tolist()
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise OutOfMemory(str(exc)) from exc
        outputs, at = [], 0
        for e in batch.items:
            n = e.input_ids.count(self.separator_id)
            steps = tuple(probs[at : at + n])
            at += n
            score = min(steps) if steps else float("nan")  # no step only in warm-up
            outputs.append(ScoreOutput(score, (), e.n_tokens, e.truncated, step_scores=steps))
        return outputs

    def _positions(self, ids: list[int]) -> list[int]:
        return [i for i, t in enumerate(ids) if t == self.separator_id]

    def _step_logits(self, batch: Prepared) -> torch.Tensor:
        """Head logits at every separator of every item, in item order: [steps in batch, 2]."""
        if batch.strategy == "packed":
            p = batch.packed
            assert p is not None
            flat, offset = [], 0
            for e in batch.items:
                flat += [offset + i for i in self._positions(e.input_ids)]
                offset += e.n_tokens
            hidden = self._base(
                input_ids=p.input_ids,
                position_ids=p.position_ids,
                use_cache=False,
                **{packing.CU_SEQLENS_KW: p.cu_seqlens, packing.MAX_LEN_KW: p.max_seqlen},
            ).last_hidden_state[0]
            return self._head(hidden[torch.tensor(flat, dtype=torch.long, device=hidden.device)])  # type: ignore[no-any-return]
        if batch.strategy == "padded":
            d = batch.padded
            assert d is not None
            rows = [r for r, e in enumerate(batch.items) for _ in self._positions(e.input_ids)]
            cols = [c for e in batch.items for c in self._positions(e.input_ids)]
            if self.decoder_head:
                out = self._base(input_ids=d.input_ids, attention_mask=d.attention_mask, use_cache=False)
                states = out.last_hidden_state
            else:
                states = None
                out = self.model(input_ids=d.input_ids, attention_mask=d.attention_mask)
            dev = d.input_ids.device
            index = (
                torch.tensor(rows, dtype=torch.long, device=dev),
                torch.tensor(cols, dtype=torch.long, device=dev),
            )
            if states is not None:
                return self._head(states[index])  # type: ignore[no-any-return]
            return out.logits[index]  # type: ignore[no-any-return]
        parts = []
        for e in batch.items:
            ids = torch.tensor([e.input_ids], dtype=torch.long, device=self.device)
            at = torch.tensor(self._positions(e.input_ids), dtype=torch.long, device=self.device)
            if self.decoder_head:
                parts.append(self._head(self._base(input_ids=ids, use_cache=False).last_hidden_state[0, at]))
            else:
                parts.append(self.model(input_ids=ids).logits[0, at])
        return torch.cat(parts)
