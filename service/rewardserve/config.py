"""One Settings object for the whole service.

Every field has a default, a bound and a docstring that says the trade-off. Each field ``x_y`` is set
by the environment variable ``REWARDSERVE_X_Y`` or by the ``rewardserve serve`` flag ``--x-y`` (the
flags are generated from this class, with the docstring as help: ``rewardserve.cli._settings``); a flag
wins over the environment. Nothing else in the package reads the environment: tests build
``Settings(...)`` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rewardserve.naming import ENV_PREFIX, setting_name

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
# A list read from one environment variable as comma-separated text (pydantic-settings would parse it as
# JSON otherwise); the command line repeats the flag instead.
KeyList = Annotated[list[str], NoDecode]
BatchStrategy = Literal["auto", "packed", "padded", "sequential"]


def default_cache_dir() -> Path:
    """Where built artefacts (the demo model) are cached: ~/.cache/rewardserve."""
    return Path.home() / ".cache" / "rewardserve"


class Settings(BaseSettings):
    """Service settings; env prefix ``REWARDSERVE_``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        # Field docstrings become descriptions: the CLI's help text is the documentation below.
        use_attribute_docstrings=True,
    )

    # --- model -------------------------------------------------------------------------------
    model: Path | None = None
    """Reward model directory (a transformers AutoModelForSequenceClassification, safetensors).
    Unset: the built-in demo model, built offline on first use and cached."""
    models: list[str] = Field(default_factory=list)
    """More reward models, each `NAME=PATH` (repeatable --model); a bare PATH takes --name. Served side
    by side, each with its own batcher and token budget; the first is the default."""
    config: Path | None = None
    """YAML file declaring models, ensembles, composites, reward functions and judges (README "Several
    reward models", "Reward functions and judges"); exclusive with --model."""
    reward_fn: list[str] = Field(default_factory=list)
    """Reward functions served beside the models (repeatable --reward-fn): `NAME` for a built-in (math,
    exact, regex, json), `NAME=TARGET` for your own, TARGET `module:function` or `path/file.py:function`.
    Each runs in its own pool of worker processes (10 s timeout per call); set timeouts and workers in
    a --config file's `functions:` section instead."""
    model_name: str = Field(default="default", min_length=1, max_length=128)
    """Name of a bare --model PATH (and of the demo model): what requests put in "model"."""
    device: Device = "auto"
    """auto = cuda when available, else cpu."""
    dtype: DType = "auto"
    """auto = bfloat16 on CUDA (2x less memory, fast tensor cores), float32 on CPU (bf16 is slow and
    lossy on most CPUs)."""
    trust_remote_code: bool = False
    """Run Python shipped with the model directory. Off: a model dir is data, not code."""
    max_input_tokens: int | None = Field(default=None, ge=8, le=1_048_576)
    """Longest accepted input. Unset: the model config's max_position_embeddings (capped at 32768)."""
    truncation_side: Literal["left", "right"] = "left"
    """Which end a `truncate: true` request loses. left keeps the response's ending, which is where a
    reward model reads its score; right keeps the prompt's start (TEI's default)."""
    batch_strategy: BatchStrategy = "auto"
    """How a batch runs. packed = one padding-free forward; padded = classic padded batch (encoders,
    reference); sequential = one forward per sequence; auto = packed for causal decoders (through the
    fused kernels on a CPU, varlen attention on CUDA), padded for encoders on CUDA, sequential for
    encoders and unfused decoders on a CPU (where padding costs more than batching buys)."""
    fused_cpu: bool = True
    """On a CPU, run Llama/Mistral/Qwen2/Qwen3 reward models through rewardserve's fused forward
    (oneDNN matmuls with packed weights, one q/k/v matmul, SiLU/gate-product/residuals fused into the
    matmuls, last layer only at the read token): ~2x the transformers modules on the benchmark model
    and CPU, equal within fp32 rounding.
    Off: the transformers modules run as loaded. Keeps a second, packed copy of the weights."""
    score_activation: Literal["none", "sigmoid"] = "none"
    """Applied to the head output. none returns the raw Bradley-Terry logit, which is what trainers
    expect (a sigmoid squashes large margins together); sigmoid only for heads trained as classifiers."""
    objective: str | None = None
    """For multi-objective heads: the objective reported as `score`. Unset: the mean of all objectives
    (every objective is reported in `details` either way)."""
    cache_dir: Path = Field(default_factory=default_cache_dir)
    """Where the demo model is built and cached."""
    torch_compile: bool = False
    """Compile the decoder with torch.compile (dynamic shapes) at load. Costs ~15 s of start-up on a
    small model (more on big ones) and buys less Python per forward: +17% tok/s for the benchmark model
    on this CPU with the engine alone. Off by default so start-up (and the test suite) stays fast."""
    torch_threads: int | None = Field(default=None, ge=1, le=1024)
    """torch intra-op threads for CPU inference. Unset: the cores divided among the compute workers."""
    compute_workers: int | None = Field(default=None, ge=1, le=64)
    """Batches that run at once, each on its own thread. Unset: 2 on a CPU with two or more cores (each
    batch on half the cores: a forward split over all cores stalls at every barrier when the server's
    own threads take one of them), 1 on CUDA."""

    # --- batching ----------------------------------------------------------------------------
    max_batch_tokens: int = Field(default=16_384, ge=16, le=10_000_000)
    """Token budget of one batch (real tokens when packed, longest x rows when padded). Larger batches
    use the GPU better but use more memory and make each request wait for bigger batches."""
    max_batch_rows: int = Field(default=256, ge=1, le=65_536)
    """Most sequences in one batch, whatever their length."""
    max_queued_requests: int = Field(default=4096, ge=1, le=10_000_000)
    """Admission bound: scoring calls admitted and not yet answered (tokenizing, waiting or running).
    Over it, 429 at once instead of queueing without limit. A backstop: max_queue_wait_s is the
    bound that bites first under overload."""
    max_queued_tokens: int = Field(default=4_000_000, ge=16, le=1_000_000_000)
    """Admission bound on tokens admitted and not yet answered (estimated from the characters before
    tokenizing). Over it, 429 at once; one call alone over it gets 422 (split it)."""
    max_queue_wait_s: float = Field(default=2.0, gt=0, le=3600)
    """Admission bound in time: a call whose estimated wait (tokens admitted ahead of it / measured
    tokens per second) is longer gets 429 + Retry-After at once. Keeps the wait of admitted calls to
    a few seconds at capacity, so overload is answered with fast 429s instead of client timeouts
    (docs/deploy.md, "Admission"). Larger: fewer 429s in bursts, longer waits under overload."""
    max_inputs_per_request: int = Field(default=4096, ge=1, le=1_000_000)
    """Most inputs in one scoring call."""
    request_timeout_s: float = Field(default=600.0, gt=0, le=86_400)
    """Deadline for a scoring call when the client sets none; an item past it is dropped before
    compute and the caller gets a timeout error, so no request waits forever."""
    watchdog_timeout_s: float = Field(default=60.0, gt=0, le=86_400)
    """A forward pass (or, with --generator, an engine step) running longer than this turns
    /health/ready and gRPC health to NOT_SERVING until it finishes: the orchestrator stops routing
    to a wedged replica. Set above the slowest legitimate batch (seconds on a GPU, more on a CPU)."""

    # --- transport ---------------------------------------------------------------------------
    host: str = "127.0.0.1"
    """HTTP (and gRPC) bind address. 127.0.0.1 keeps a dev server private; 0.0.0.0 in containers."""
    port: int = Field(default=8000, ge=0, le=65_535)
    """HTTP port; 0 picks a free one (tests)."""
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=2**31)
    """Largest HTTP request body; larger gets 413 before it is parsed."""
    grpc_port: int = Field(default=50051, ge=0, le=65_535)
    """gRPC port (native API, KServe V2, health, reflection), on the same host and in the same process
    and event loop as HTTP; 0 picks a free one (tests)."""
    grpc_max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=2**31 - 1)
    """Largest gRPC message either way (gRPC's own default is 4 MiB, too small for big batches of long
    inputs). A larger request fails with RESOURCE_EXHAUSTED before it is parsed; each in-flight call
    may hold this much memory."""
    max_json_depth: int = Field(default=64, ge=2, le=10_000)
    """Deepest nesting of arrays/objects in a JSON body, checked on the raw bytes before parsing (a
    deeply nested body would otherwise exhaust the parser's recursion). Over it: 422."""
    input_chars_per_token: int = Field(default=32, ge=1, le=1024)
    """Characters per input are capped at this x max_input_tokens (x 4 with truncate), checked before
    the tokenizer sees the text: a longer text cannot fit, and tokenizing megabytes only to refuse
    them would block scoring for seconds. Over it: 422."""
    max_header_bytes: int = Field(default=65_536, ge=1024, le=16 * 1024 * 1024)
    """Largest HTTP request line + headers; a larger one is refused (400) and the connection closed."""
    request_read_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """An HTTP connection must deliver a complete request head within this long of opening (or of
    its previous answer), and the body within this long of the head (else 408); a connection that
    sends nothing, or trickles, is closed instead of holding a slot."""
    max_connections: int = Field(default=2048, ge=1, le=1_000_000)
    """Concurrent HTTP connections (and requests) served; over it, 503 at once."""
    grpc_max_concurrent_rpcs: int = Field(default=4096, ge=1, le=1_000_000)
    """Concurrent gRPC calls; over it, RESOURCE_EXHAUSTED at once."""
    stream_max_pending: int = Field(default=64, ge=1, le=100_000)
    """ScoreStream: answers computed but not yet read by the client, per stream; at the limit the
    server stops reading that stream's requests until the client reads (bounded memory)."""

    # --- security (README "Security") --------------------------------------------------------
    api_keys: KeyList = Field(default_factory=list)
    """Keys that may call every route except weight reloads (Authorization: Bearer KEY; gRPC metadata
    authorization). Repeat the flag; the environment variable is comma-separated. With no api or admin
    key, no route needs one."""
    admin_keys: KeyList = Field(default_factory=list)
    """Keys that may also reload the policy weights. Repeat the flag; env comma-separated."""
    metrics_auth: bool = False
    """Require a key for /metrics too. Off: /metrics stays open for Prometheus scrapers."""
    weights_root: Path | None = None
    """Directory that policy weight reloads (/v1/generator/weights) may read from; a path resolving
    outside it (symlinks and .. followed) is refused. Unset: reloads are refused."""
    tls_cert: Path | None = None
    """PEM certificate chain: serve HTTPS and gRPC over TLS on the same ports (with tls_key)."""
    tls_key: Path | None = None
    """PEM private key of tls_cert."""
    tls_client_ca: Path | None = None
    """PEM CA bundle: require client certificates signed by it (mutual TLS) on both ports."""

    drain_timeout_s: float = Field(default=30.0, ge=0, le=3600)
    """On SIGTERM: the ONE budget for the whole drain (waiting for in-flight calls, answering the rest
    with 503, stopping the servers and the engine). Keep the pod's terminationGracePeriodSeconds
    above it (plus ~15 s for a vLLM engine's shutdown)."""
    warmup: bool = True
    """Run one forward pass before reporting ready, so the first real request is not the slow one."""

    # --- policy generation (vLLM; docs/generation.md) ----------------------------------------
    generator: Path | None = None
    """Policy model directory (a causal LM vLLM can load) served by /v1/generate and /v1/rollout.
    Unset: scoring only, and vllm is never imported."""
    generator_name: str = Field(default="policy", min_length=1, max_length=128)
    """Name of the policy in /v1/models and in requests' optional "generator" field."""
    generator_dtype: DType = "auto"
    """vLLM dtype. auto = vLLM's rule: the checkpoint's dtype, except that float32 checkpoints run in
    half precision on GPUs. Sampling logprobs are only as exact as this dtype."""
    generator_max_model_len: int | None = Field(default=None, ge=16, le=1_048_576)
    """Longest prompt + completion. Unset: the model config's. Lower it to fit more sequences in the
    KV cache."""
    generator_gpu_memory_fraction: float = Field(default=0.5, gt=0.0, le=0.95)
    """Share of the GPU vLLM may take (weights + KV cache). Below vLLM's 0.9 so that the reward model
    and its batches fit on the same card; raise it when the reward model lives elsewhere."""
    generator_kv_cache_bytes: int | None = Field(default=None, ge=2**20, le=2**40)
    """Fixed KV-cache size in bytes; overrides the memory fraction. Unset: 256 MiB on CPU (vLLM-CPU
    refuses to start with its default memory settings on small machines), the fraction on GPUs."""
    generator_tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    """GPUs the policy is sharded over (vLLM tensor parallelism)."""
    generator_seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Engine seed: sampling without a per-request seed is reproducible from engine start."""
    generator_enforce_eager: bool | None = None
    """Skip CUDA-graph capture / torch.compile. Unset: eager on CPU (compiling costs minutes there),
    graphs on GPUs (faster decoding, slower start)."""
    generator_max_samples_per_request: int = Field(default=4096, ge=1, le=1_000_000)
    """Most samples (prompts x n) in one generate or rollout call; more gets 422."""
    generator_reload_timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    """How long a weight reload waits for in-flight generation to finish before giving up (503, the old
    weights stay). New generation waits behind the reload meanwhile."""

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return [str(k).strip() for k in value if str(k).strip()]
        return value

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _check_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:  # the message never contains the key
            if len(key) < 16 or any(c.isspace() or not c.isprintable() for c in key):
                raise ValueError("each key needs at least 16 printable characters and no spaces or commas")
        return keys

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.admin_keys)

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(f"{setting_name('tls_cert')} and {setting_name('tls_key')} go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(f"{setting_name('tls_client_ca')} needs {setting_name('tls_cert')} too")
        return self

    @model_validator(mode="after")
    def _check_budget(self) -> Settings:
        if self.max_input_tokens is not None and self.max_batch_tokens < self.max_input_tokens:
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) must be >= max_input_tokens "
                f"({self.max_input_tokens}): the longest input must fit in one batch. Raise "
                f"{setting_name('max_batch_tokens')} or lower {setting_name('max_input_tokens')}."
            )
        return self
