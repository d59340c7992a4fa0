"""Typed configuration: one frozen dataclass per `params.yaml` section (`genz_speak.params` loads them).

Validation is pydantic's (dataclasses with `extra="forbid"`), so an unknown key or a bad value fails
with the dotted `params.yaml` key that caused it, e.g. ``params.yaml: train.lora.rank: ...``.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=False)

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Dtype = Literal["float32", "bfloat16", "float16"]


def _http_url(url: str) -> str:
    # Without a scheme ("localhost:8000/v1") the client would fail on every request, one row at a time.
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL; write it in full, e.g. http://localhost:8000/v1")
    return url


HttpURL = Annotated[str, AfterValidator(_http_url)]

EMBEDDED_STUDENT = "embedded:smollm2-135m-instruct"
EMBEDDED_ENCODER = "embedded:all-minilm-l6-v2"

# Keys that change how a stage runs, never what it writes: threads, endpoints and credentials' names,
# timeouts and retries, resume and checkpoint cadence, pass/fail gates that are not recorded, and vLLM's
# memory and graph settings. dvc.yaml lists every other key under its stage's params, so changing one of
# these reruns nothing (tests/unit/test_config.py holds the two in step).
OPERATIONAL_KEYS = frozenset(
    {
        "generate.base_url",  # the rewrite cache is keyed by model and prompt, not by endpoint
        "generate.base_urls",
        "generate.api_key_env",
        "generate.concurrency",
        "generate.request_timeout",
        "generate.max_retries",
        "generate.endpoint_max_failures",
        "generate.endpoint_cooldown",
        "generate.max_reject_fraction",
        "generate.vllm.gpu_memory_utilization",
        "generate.vllm.enforce_eager",
        "train.cpu_threads",
        "train.resume",
        "train.save_steps",
        "evaluate.llm.base_url",
        "evaluate.llm.api_key_env",
        "evaluate.llm.concurrency",
        "evaluate.llm.request_timeout",
        "evaluate.llm.max_retries",
        "evaluate.llm.max_failed_fraction",
    }
)


# ----------------------------------------------------------------------------------------------- prepare
@dataclass(config=_STRICT)
class SourceConfig:
    kind: Literal["local", "hub"] = "local"
    path: str = "data/questions.jsonl"
    dataset: str = "databricks/databricks-dolly-15k"
    split: str = "train"


@dataclass(config=_STRICT)
class PrepareConfig:
    source: SourceConfig = SourceConfig()
    categories: tuple[str, ...] = ()
    max_chars: PositiveInt = 3000
    seed: int = 42
    heldout_size: PositiveInt = 10
    validation_size: NonNegInt = 20
    max_train_rows: PositiveInt | None = None
    max_bad_rows: NonNegInt = 0  # skip budget: bad source rows skipped and reported; one more fails
    base_model: str = EMBEDDED_STUDENT
    base_dtype: Dtype = "float32"


# ---------------------------------------------------------------------------------------------- generate
DEFAULT_SYSTEM_PROMPT = (
    "You rewrite answers in natural Gen Z voice, the way people in their late teens and twenties really "
    "write in a group chat or a comment. Keep every fact, number, name and list item exactly, and add no "
    "new claims. Vary how you open (often just start with the answer). Use slang only where it fits, "
    "inside the sentences; lowercase, contractions and casual rhythm are fine. Emoji rarely, at most one. "
    "Never bolt catchphrases onto the start or end. Reply with the rewritten answer only."
)


@dataclass(config=_STRICT)
class SamplingConfig:
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.7
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    max_new_tokens: PositiveInt = 384
    seed: int = 0


@dataclass(config=_STRICT)
class ValidationConfig:
    min_chars: NonNegInt = 8
    max_length_ratio: Annotated[float, Field(gt=0.0)] = 4.0
    # A rewrite may always be this long: restyling a short answer ("2018", a name) takes a sentence or two.
    max_length_floor: NonNegInt = 400
    keep_numbers: bool = True
    keep_entities: bool = True
    max_echo_similarity: Fraction = 0.98


@dataclass(config=_STRICT)
class VLLMConfig:
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"  # auto: the model's stored dtype
    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] = 0.85
    max_model_len: PositiveInt | None = None  # None: the model's own context length
    enforce_eager: bool = False  # True skips CUDA-graph capture: faster start, slower decoding
    attention_backend: str | None = None  # e.g. FLASH_ATTN; None lets vLLM choose


@dataclass(config=_STRICT)
class FewShotConfig:
    count: NonNegInt = 4  # corpus rewrites shown before each row (0: none)
    by_category: bool = True  # drawn from the row's own Dolly category first
    seed: int = 0  # which corpus rows: a pure function of this, the row and the corpus


@dataclass(config=_STRICT)
class GenerateConfig:
    # corpus: the hand-written rewrites (data/genz_corpus.jsonl), the offline default; rules: a caricature
    # stylizer (stock openers and closers); transformers / openai / vllm: real LLM teachers.
    teacher: Literal["corpus", "rules", "transformers", "openai", "vllm"] = "corpus"
    # corpus teacher, a source row the corpus has no rewrite for: error, or the rules stylizer (marked).
    corpus_missing: Literal["error", "rules"] = "error"
    model: str = ""
    base_url: HttpURL | None = None
    # Several endpoints serving the same model (e.g. vLLM replicas): requests are spread across them.
    base_urls: tuple[HttpURL, ...] = ()
    api_key_env: str = "OPENAI_API_KEY"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    prompt_template: str = (
        "Rewrite the answer below in Gen Z voice. Keep every fact, number and name.\n"
        "Question: {instruction}\n{context}Answer: {response}\nRewritten answer:"
    )
    fewshot: FewShotConfig = FewShotConfig()  # LLM teachers: corpus rewrites as worked examples
    sampling: SamplingConfig = SamplingConfig()
    batch_size: PositiveInt = 16
    concurrency: PositiveInt = 8  # requests in flight per endpoint
    request_timeout: Annotated[float, Field(gt=0.0)] = 60.0
    max_retries: NonNegInt = 5
    # With several endpoints: this many faults in a row take one out of rotation for endpoint_cooldown s.
    endpoint_max_failures: PositiveInt = 3
    endpoint_cooldown: Annotated[float, Field(gt=0.0)] = 30.0
    max_reject_fraction: Fraction = 0.5
    validation: ValidationConfig = ValidationConfig()
    vllm: VLLMConfig = VLLMConfig()

    @model_validator(mode="after")
    def _needs_model(self) -> GenerateConfig:
        if self.teacher not in ("corpus", "rules") and not self.model:
            raise ValueError(f"teacher '{self.teacher}' needs generate.model (a model id or local path)")
        if self.base_url and self.base_urls:
            raise ValueError("base_url and base_urls are alternatives: list every endpoint in base_urls")
        if len(set(self.base_urls)) != len(self.base_urls):
            raise ValueError("base_urls lists an endpoint twice (raise concurrency instead)")
        for field in ("{instruction}", "{response}"):
            if field not in self.prompt_template:
                raise ValueError(f"prompt_template must contain {field}")
        try:  # other braces must be doubled, or every row would fail later on str.format
            self.prompt_template.format(instruction="", context="", response="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"prompt_template: {err!r} is not one of {{instruction}}, {{context}}, {{response}}; "
                "write literal braces as {{ and }}"
            ) from None
        return self


# ------------------------------------------------------------------------------------------------- train
@dataclass(config=_STRICT)
class LoraConfig:
    rank: PositiveInt = 16
    alpha: PositiveInt = 32
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    top_layers: PositiveInt | None = None  # adapt only the last N decoder layers (None = all)


@dataclass(config=_STRICT)
class TrainConfig:
    backend: Literal["auto", "unsloth", "transformers"] = "auto"
    load_in_4bit: bool = False
    max_seq_length: PositiveInt = 512
    batch_size: PositiveInt = 8
    gradient_accumulation_steps: PositiveInt = 1
    # Rows per optimizer step stay batch_size * gradient_accumulation_steps; micro_batch re-splits them:
    # "auto" picks the largest divisor that fits in GPU memory (fewer accumulation steps), an int forces one.
    micro_batch: Literal["auto"] | PositiveInt | None = None
    # Data-parallel processes (DDP through `accelerate launch`), one per GPU; "auto": every visible GPU.
    # The rows per optimizer step are split across them: micro-batch x accumulation x processes.
    num_processes: Literal["auto"] | PositiveInt = 1
    packing: bool = False
    # bfd: TRL's best-fit packing, padding-free, rows never see each other (needs varlen attention);
    # wrapped: rows concatenated and cut into dense max_seq_length blocks, attending across row boundaries
    # (pretraining-style), the fastest shape on a GPU.
    packing_strategy: Literal["bfd", "wrapped"] = "bfd"
    # Padding-free batches concatenate a micro-batch's rows (varlen attention, no pad tokens). None leaves
    # the choice to the backend: Unsloth measures and picks per GPU; TRL pads unless packing.
    padding_free: bool | None = None
    # transformers backend: the attention implementation; None: genz_varlen for padding-free batches (rows
    # kept apart by torch's varlen kernel, or SDPA per row without CUDA), transformers' default otherwise.
    # Padding-free batches need genz_varlen or a flash-attention kernel: under sdpa/eager rows see each other.
    attn_implementation: str | None = None
    group_by_length: bool = False
    pad_to_multiple_of: PositiveInt | None = None
    epochs: Annotated[float, Field(gt=0.0)] = 1.0
    max_steps: int = -1
    learning_rate: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-3
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    optimizer: Literal["adamw_torch", "adamw_8bit"] = "adamw_torch"
    gradient_checkpointing: bool = False
    # CPU only (CUDA trains bf16 anyway): bf16 autocast over a bf16 base with fp32 LoRA weights. "auto" takes
    # bf16 where the CPU multiplies bf16 in hardware (AMX or AVX512-BF16: 2x fp32 here) and fp32 elsewhere,
    # where bf16 is emulated and slower than fp32.
    cpu_precision: Literal["auto", "fp32", "bf16"] = "auto"
    logging_steps: PositiveInt = 5
    eval_steps: PositiveInt | None = None
    seed: int = 42
    cpu_threads: NonNegInt = 2
    # Greedy answers to this many fixed validation questions before training and at each evaluation, in
    # <live dir>/samples.jsonl (0: none).
    sample_questions: NonNegInt = 3
    sample_max_new_tokens: PositiveInt = 64
    resume: bool = False  # checkpoint every save_steps; a rerun after a kill continues from the last one
    save_steps: PositiveInt = 50
    lora: LoraConfig = LoraConfig()

    @property
    def padding_free_batches(self) -> bool | None:
        """Whether batches concatenate rows without padding: bfd packing always, wrapped packing never
        (dense blocks), else `padding_free` (None: the backend decides)."""
        if self.packing:
            return self.packing_strategy == "bfd"
        return self.padding_free

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("max_steps must be -1 (use epochs) or a positive number of steps")
        effective = self.batch_size * self.gradient_accumulation_steps
        if isinstance(self.micro_batch, int) and effective % self.micro_batch:
            raise ValueError(
                f"micro_batch {self.micro_batch} must divide batch_size * gradient_accumulation_steps"
            )
        if self.packing and self.group_by_length:
            raise ValueError("packing and group_by_length are alternatives; enable one")
        if self.packing and self.packing_strategy == "bfd" and self.padding_free is False:
            raise ValueError("bfd packing is padding-free: padding_free: false contradicts it")
        return self


# ------------------------------------------------------------------------------------------------- merge
@dataclass(config=_STRICT)
class MergeConfig:
    backend: Literal["auto", "unsloth", "peft"] = "auto"
    # float16, not bfloat16: rounding base + delta to bf16's 8-bit mantissa drops much of a small LoRA delta.
    dtype: Dtype = "float16"
    tolerance: Annotated[float, Field(gt=0.0)] = 1.0
    check_prompts: PositiveInt = 3


# ---------------------------------------------------------------------------------------------- evaluate
@dataclass(config=_STRICT)
class OfflineJudgeConfig:
    encoder: str = EMBEDDED_ENCODER  # sentence encoder: relevance and coverage
    lm: str = EMBEDDED_STUDENT  # causal LM whose early hidden states are the style model's first view
    lm_layers: PositiveInt = 6  # how many of its layers run (the state after them is the feature)


@dataclass(config=_STRICT)
class LLMJudgeConfig:
    model: str = "gpt-5-mini"
    base_url: HttpURL | None = None
    api_key_env: str = "OPENAI_API_KEY"
    reference_guided: bool = True
    json_schema: bool = True
    price_in_per_mtok: Annotated[float, Field(ge=0.0)] = 0.25  # USD per million tokens, for the cost estimate
    price_out_per_mtok: Annotated[float, Field(ge=0.0)] = 2.0
    concurrency: PositiveInt = 4
    request_timeout: Annotated[float, Field(gt=0.0)] = 120.0
    max_retries: NonNegInt = 4
    # Fail the stage when more judgements than this fail after their retries (all failing always fails it).
    max_failed_fraction: Fraction = 0.1


@dataclass(config=_STRICT)
class DecodingConfig:
    """How the student answers: evaluate's decoding, and `genz-speak chat`'s defaults."""

    max_new_tokens: PositiveInt = 128
    temperature: Annotated[float, Field(ge=0.0)] = 0.0  # 0: greedy
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0  # sampling only
    seed: int = 0  # sampling only: each batch samples from torch's generator seeded with this
    repetition_penalty: Annotated[float, Field(ge=1.0)] = 1.2
    # Whether the repetition penalty and the n-gram ban count the prompt's tokens (transformers' default).
    # A chat prompt ends each turn with the end-of-turn token, so counted, the penalty makes stopping less
    # likely at every step; and an answer may not restate the question's own phrases under the ban.
    count_prompt: bool = True
    no_repeat_ngram_size: NonNegInt = 0  # > 0: no n-gram of this size twice in the answer (0: off)


@dataclass(config=_STRICT)
class EvaluateConfig:
    judge: Literal["offline", "openai", "both"] = "offline"
    max_validation: NonNegInt = 10
    decoding: DecodingConfig = DecodingConfig()
    batch_size: PositiveInt = 10
    seed: int = 0
    bootstrap_samples: PositiveInt = 2000
    offline: OfflineJudgeConfig = OfflineJudgeConfig()
    llm: LLMJudgeConfig = LLMJudgeConfig()


# -------------------------------------------------------------------------------------------------- plot
@dataclass(config=_STRICT)
class PlotConfig:
    dpi: PositiveInt = 120


# ------------------------------------------------------------------------------------------------ export
GgufFormat = Literal["f16", "q8_0"]


@dataclass(config=_STRICT)
class GgufToleranceConfig:
    # Max |logit diff| of each GGUF, reloaded, against the merged folder. f16 stores a float16 merge exactly.
    f16: Annotated[float, Field(gt=0.0)] = 0.01
    q8_0: Annotated[float, Field(gt=0.0)] = 3.0


@dataclass(config=_STRICT)
class ExportConfig:
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = "genz-speak"
    formats: tuple[GgufFormat, ...] = ("f16", "q8_0")
    tolerance: GgufToleranceConfig = GgufToleranceConfig()
    check_prompts: PositiveInt = 3
    # llama.cpp's name for the pre-tokenizer of a byte-level BPE vocabulary (`tokenizer.ggml.pre`):
    # llama.cpp recognises it by a hash of sample encodings that gguf-py does not ship, so it is named here.
    tokenizer_pre: str = "smollm"
    modelfile_from: GgufFormat = "q8_0"
    num_ctx: PositiveInt = 2048
    license: str = "apache-2.0"  # the base model's licence, declared by the model card

    @model_validator(mode="after")
    def _check(self) -> ExportConfig:
        if len(set(self.formats)) != len(self.formats):
            raise ValueError("formats lists a format twice")
        if self.formats and self.modelfile_from not in self.formats:
            raise ValueError(f"modelfile_from {self.modelfile_from!r} must be one of formats {self.formats}")
        return self


@dataclass(config=_STRICT)
class Params:
    prepare: PrepareConfig = PrepareConfig()
    generate: GenerateConfig = GenerateConfig()
    train: TrainConfig = TrainConfig()
    merge: MergeConfig = MergeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    plot: PlotConfig = PlotConfig()
    export: ExportConfig = ExportConfig()
