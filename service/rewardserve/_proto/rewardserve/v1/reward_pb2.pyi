from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("prompt", "response", "messages", "text", "steps", "label_json", "metadata_json", "group")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LABEL_JSON_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    response: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    text: str
    steps: _containers.RepeatedScalarFieldContainer[str]
    label_json: str
    metadata_json: str
    group: str
    def __init__(self, prompt: _Optional[str] = ..., response: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., text: _Optional[str] = ..., steps: _Optional[_Iterable[str]] = ..., label_json: _Optional[str] = ..., metadata_json: _Optional[str] = ..., group: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("model", "inputs", "truncate", "weights", "reduce", "step_reduce", "advantage")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    REDUCE_FIELD_NUMBER: _ClassVar[int]
    STEP_REDUCE_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    truncate: bool
    weights: _containers.ScalarMap[str, float]
    reduce: str
    step_reduce: str
    advantage: str
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., truncate: _Optional[bool] = ..., weights: _Optional[_Mapping[str, float]] = ..., reduce: _Optional[str] = ..., step_reduce: _Optional[str] = ..., advantage: _Optional[str] = ...) -> None: ...

class Detail(_message.Message):
    __slots__ = ("tokens", "truncated", "objectives", "raw", "members", "mean", "std", "min", "conservative", "components", "step_scores", "status", "mask", "error", "extras_json", "advantage")
    class ObjectivesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MembersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ComponentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVES_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    CONSERVATIVE_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    STEP_SCORES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXTRAS_JSON_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    truncated: bool
    objectives: _containers.ScalarMap[str, float]
    raw: float
    members: _containers.ScalarMap[str, float]
    mean: float
    std: float
    min: float
    conservative: float
    components: _containers.ScalarMap[str, float]
    step_scores: _containers.RepeatedScalarFieldContainer[float]
    status: str
    mask: bool
    error: str
    extras_json: str
    advantage: float
    def __init__(self, tokens: _Optional[int] = ..., truncated: _Optional[bool] = ..., objectives: _Optional[_Mapping[str, float]] = ..., raw: _Optional[float] = ..., members: _Optional[_Mapping[str, float]] = ..., mean: _Optional[float] = ..., std: _Optional[float] = ..., min: _Optional[float] = ..., conservative: _Optional[float] = ..., components: _Optional[_Mapping[str, float]] = ..., step_scores: _Optional[_Iterable[float]] = ..., status: _Optional[str] = ..., mask: _Optional[bool] = ..., error: _Optional[str] = ..., extras_json: _Optional[str] = ..., advantage: _Optional[float] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens",)
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("model", "scores", "details", "usage")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    scores: _containers.RepeatedScalarFieldContainer[float]
    details: _containers.RepeatedCompositeFieldContainer[Detail]
    usage: Usage
    def __init__(self, model: _Optional[str] = ..., scores: _Optional[_Iterable[float]] = ..., details: _Optional[_Iterable[_Union[Detail, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class ScoreStreamRequest(_message.Message):
    __slots__ = ("id", "model", "inputs", "truncate", "weights", "reduce", "step_reduce")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    REDUCE_FIELD_NUMBER: _ClassVar[int]
    STEP_REDUCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    truncate: bool
    weights: _containers.ScalarMap[str, float]
    reduce: str
    step_reduce: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., truncate: _Optional[bool] = ..., weights: _Optional[_Mapping[str, float]] = ..., reduce: _Optional[str] = ..., step_reduce: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ScoreStreamResponse(_message.Message):
    __slots__ = ("id", "response", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    response: ScoreResponse
    error: Error
    def __init__(self, id: _Optional[str] = ..., response: _Optional[_Union[ScoreResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Pair(_message.Message):
    __slots__ = ("prompt", "a", "b")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    a: str
    b: str
    def __init__(self, prompt: _Optional[str] = ..., a: _Optional[str] = ..., b: _Optional[str] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("model", "pairs", "truncate", "weights", "reduce", "step_reduce")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    REDUCE_FIELD_NUMBER: _ClassVar[int]
    STEP_REDUCE_FIELD_NUMBER: _ClassVar[int]
    model: str
    pairs: _containers.RepeatedCompositeFieldContainer[Pair]
    truncate: bool
    weights: _containers.ScalarMap[str, float]
    reduce: str
    step_reduce: str
    def __init__(self, model: _Optional[str] = ..., pairs: _Optional[_Iterable[_Union[Pair, _Mapping]]] = ..., truncate: _Optional[bool] = ..., weights: _Optional[_Mapping[str, float]] = ..., reduce: _Optional[str] = ..., step_reduce: _Optional[str] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("model", "probabilities", "margins")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    MARGINS_FIELD_NUMBER: _ClassVar[int]
    model: str
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    margins: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model: _Optional[str] = ..., probabilities: _Optional[_Iterable[float]] = ..., margins: _Optional[_Iterable[float]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelCard(_message.Message):
    __slots__ = ("id", "architecture", "model_type", "max_input_tokens", "dtype", "device", "head", "objectives", "batch_strategy", "chat_template", "kernels", "kind", "memory_bytes", "members", "weights", "card_json")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVES_FIELD_NUMBER: _ClassVar[int]
    BATCH_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    KERNELS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    architecture: str
    model_type: str
    max_input_tokens: int
    dtype: str
    device: str
    head: str
    objectives: _containers.RepeatedScalarFieldContainer[str]
    batch_strategy: str
    chat_template: bool
    kernels: str
    kind: str
    memory_bytes: int
    members: _containers.RepeatedScalarFieldContainer[str]
    weights: _containers.ScalarMap[str, float]
    card_json: str
    def __init__(self, id: _Optional[str] = ..., architecture: _Optional[str] = ..., model_type: _Optional[str] = ..., max_input_tokens: _Optional[int] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., head: _Optional[str] = ..., objectives: _Optional[_Iterable[str]] = ..., batch_strategy: _Optional[str] = ..., chat_template: _Optional[bool] = ..., kernels: _Optional[str] = ..., kind: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., members: _Optional[_Iterable[str]] = ..., weights: _Optional[_Mapping[str, float]] = ..., card_json: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelCard]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelCard, _Mapping]]] = ...) -> None: ...
