"""Typed configuration: one frozen dataclass per `params.yaml` section (`genz_speak.params` loads them).

Validation is pydantic's (dataclasses with `extra="forbid"`), so an unknown key or a bad value fails
with the dotted `params.yaml` key that caused it, e.g. ``params.yaml: train.lora.rank: ...``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, ConfigDict, Field, Strict, model_validator
from pydantic.dataclasses import dataclass

# Unknown keys are errors; numbers must be finite (`.inf` or `.nan` in a timeout, a rate or a count of
# epochs only fails later, mid-run).
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)

# Numbers and switches are taken as written, never coerced: `batch_size: true` is not 1, `1.5` (or `1.0`)
# is not an int, `"1e-3"` is not a float and `1` is not true. A float key takes an int (`epochs: 1`).
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, Strict()]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0.0)]
NonNegFloat = Annotated[float, Strict(), Field(ge=0.0)]
Fraction = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
Dtype = Literal["float32", "bfloat16", "float16"]
# The student's chat template: auto (its own, else plain), own (required), plain or chatml (given by prepare).
ChatTemplate = Literal["auto", "own", "plain", "chatml"]
# Dolly's eight categories (data.dataset checks every source row against them too).
DollyCategory = Literal[
    "open_qa", "general_qa", "closed_qa", "brainstorming", "classification", "information_extraction",
    "summarization", "creative_writing",
]  # fmt: skip


def _env_name(name: str) -> str:
    # An empty or malformed name would read no key at all, and a local server accepts that silently.
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{name!r} is not an environment variable name (e.g. OPENAI_API_KEY)")
    return name


EnvName = Annotated[str, AfterValidator(_env_name)]


def _http_url(url: str) -> str:
    # Without a scheme ("localhost:8000/v1") the client would fail on every request, one row at a time.
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL; write it in full, e.g. http://localhost:8000/v1")
    return url


HttpURL = Annotated[str, AfterValidator(_http_url)]
EMBEDDED_STUDENT = "embedded:smollm2-135m-instruct"
EMBEDDED_ENCODER = "embedded:all-minilm-l6-v2"

# Keys that change how a stage runs, never what it writes: threads, credentials' names, concurrency,
# timeouts and retries, resume and checkpoint cadence, pass/fail gates that are not recorded, and vLLM's
# memory and graph settings. The endpoints are not among them: who answers decides the rewrites and
# verdicts (a dry run's stand-in, another model behind the same name), so pointing base_url elsewhere
# reruns the stage, and the cache reuses only what the listed servers wrote. dvc.yaml lists every other
# key under its stage's params, so changing one of these reruns nothing (tests/unit/test_config.py holds
# the two in step).
OPERATIONAL_KEYS = frozenset({
    "generate.api_key_env", "generate.concurrency", "generate.request_timeout", "generate.max_retries",
    "generate.endpoint_max_failures", "generate.endpoint_cooldown", "generate.max_reject_fraction",
    "generate.vllm.gpu_memory_utilization", "generate.vllm.enforce_eager",
    "train.cpu_threads", "train.resume", "train.save_steps",
    "evaluate.llm.api_key_env", "evaluate.llm.concurrency", "evaluate.llm.request_timeout",
    "evaluate.llm.max_retries", "evaluate.llm.max_failed_fraction",
})  # fmt: skip


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
    categories: tuple[DollyCategory, ...] = ()  # () keeps all
    max_chars: PositiveInt = 3000
    seed: Int = 42
    heldout_size: PositiveInt = 10
    validation_size: NonNegInt = 20
    max_train_rows: PositiveInt | None = None
    max_bad_rows: NonNegInt = 0  # skip budget: bad source rows skipped and reported; one more fails
    base_model: str = EMBEDDED_STUDENT
    base_dtype: Dtype = "float32"
    chat_template: ChatTemplate = "auto"  # genz_speak.chat_templates says what each choice writes


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
    temperature: Annotated[float, Strict(), Field(ge=0.0, le=2.0)] = 0.7
    top_p: Annotated[float, Strict(), Field(gt=0.0, le=1.0)] = 0.95
    max_new_tokens: PositiveInt = 384
    seed: Int = 0


@dataclass(config=_STRICT)
class ValidationConfig:
    min_chars: NonNegInt = 8
    max_length_ratio: PositiveFloat = 4.0
    # A rewrite may always be this long: restyling a short answer ("2018", a name) takes a sentence or two.
    max_length_floor: NonNegInt = 400
    keep_numbers: Bool = True
    keep_entities: Bool = True
    max_echo_similarity: Fraction = 0.98
    # A rewrite keeps at least this share of the source's content words (case-folded, lightly stemmed,
    # stopwords out, numbers counted): every hand-written corpus rewrite keeps 0.26 or more, other
    # questions' rewrites keep under 0.25 in 99.8% of pairs (BENCHMARKS.md).
    min_source_overlap: Fraction = 0.25
    reject_truncated: Bool = True  # a reply the teacher cut off (finish_reason "length") is rejected


@dataclass(config=_STRICT)
class VLLMConfig:
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"  # auto: the model's stored dtype
    gpu_memory_utilization: Annotated[float, Strict(), Field(gt=0.0, le=1.0)] = 0.85
    max_model_len: PositiveInt | None = None  # None: the model's own context length
    enforce_eager: Bool = False  # True skips CUDA-graph capture: faster start, slower decoding
    attention_backend: str | None = None  # e.g. FLASH_ATTN; None lets vLLM choose


@dataclass(config=_STRICT)
class FewShotConfig:
    count: NonNegInt = 4  # corpus rewrites shown before each row (0: none)
    by_category: Bool = True  # drawn from the row's own Dolly category first
    seed: Int = 0  # which corpus rows: a pure function of this, the row and the corpus


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
    api_key_env: EnvName = "OPENAI_API_KEY"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    prompt_template: str = (
        "Rewrite the answer below in Gen Z voice. Keep every fact, number and name.\n"
        "Question: {instruction}\n{context}Answer: {response}\nRewritten answer:"
    )
    fewshot: FewShotConfig = FewShotConfig()  # LLM teachers: corpus rewrites as worked examples
    sampling: SamplingConfig = SamplingConfig()
    batch_size: PositiveInt = 16
    concurrency: PositiveInt = 8  # requests in flight per endpoint
    request_timeout: PositiveFloat = 60.0
    max_retries: NonNegInt = 5
    # With several endpoints: this many faults in a row take one out of rotation for endpoint_cooldown s.
    endpoint_max_failures: PositiveInt = 3
    endpoint_cooldown: PositiveFloat = 30.0
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
    dropout: Annotated[float, Strict(), Field(ge=0.0, lt=1.0)] = 0.0
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
    load_in_4bit: Bool = False
    max_seq_length: PositiveInt = 512
    batch_size: PositiveInt = 8
    gradient_accumulation_steps: PositiveInt = 1
    # Rows per optimizer step stay batch_size * gradient_accumulation_steps; micro_batch re-splits them:
    # "auto" picks the largest divisor that fits in GPU memory (fewer accumulation steps), an int forces one.
    micro_batch: Literal["auto"] | PositiveInt | None = None
    # Data-parallel processes (DDP through `accelerate launch`), one per GPU; "auto": every visible GPU.
    # The rows per optimizer step are split across them: micro-batch x accumulation x processes.
    num_processes: Literal["auto"] | PositiveInt = 1
    packing: Bool = False
    # bfd: TRL's best-fit packing, padding-free, rows never see each other (needs varlen attention);
    # wrapped: rows concatenated and cut into dense max_seq_length blocks, attending across row boundaries
    # (pretraining-style), the fastest shape on a GPU.
    packing_strategy: Literal["bfd", "wrapped"] = "bfd"
    # Padding-free batches concatenate a micro-batch's rows (varlen attention, no pad tokens). None leaves
    # the choice to the backend: Unsloth measures and picks per GPU; TRL pads unless packing.
    padding_free: Bool | None = None
    # transformers backend: the attention implementation; None: genz_varlen for padding-free batches (rows
    # kept apart by torch's varlen kernel, or SDPA per row without CUDA), transformers' default otherwise.
    # Padding-free batches need genz_varlen or a flash-attention kernel: under sdpa/eager rows see each other.
    attn_implementation: str | None = None
    group_by_length: Bool = False
    pad_to_multiple_of: PositiveInt | None = None
    epochs: PositiveFloat = 3.0
    max_steps: Int = -1
    learning_rate: Annotated[float, Strict(), Field(gt=0.0, lt=1.0)] = 5e-4
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: Annotated[float, Strict(), Field(ge=0.0, lt=1.0)] = 0.05
    weight_decay: NonNegFloat = 0.0
    optimizer: Literal["adamw_torch", "adamw_8bit"] = "adamw_torch"
    gradient_checkpointing: Bool = False
    cpu_precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the CPU has AMX/AVX512-BF16
    logging_steps: PositiveInt = 5
    eval_steps: PositiveInt | None = None
    seed: Int = 42
    cpu_threads: NonNegInt = 2
    # Greedy answers to this many fixed validation questions before training and at each evaluation, in
    # <live dir>/samples.jsonl (0: none).
    sample_questions: NonNegInt = 3
    sample_max_new_tokens: PositiveInt = 64
    resume: Bool = False  # checkpoint every save_steps; a rerun after a kill continues from the last one
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
    tolerance: PositiveFloat = 1.0
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
    api_key_env: EnvName = "OPENAI_API_KEY"
    reference_guided: Bool = True
    json_schema: Bool = True
    price_in_per_mtok: NonNegFloat = 0.25  # USD per million tokens, for the cost estimate
    price_out_per_mtok: NonNegFloat = 2.0
    concurrency: PositiveInt = 4
    request_timeout: PositiveFloat = 120.0
    max_retries: NonNegInt = 4
    # Fail the stage when more judgements than this fail after their retries (all failing always fails it).
    max_failed_fraction: Fraction = 0.1


@dataclass(config=_STRICT)
class DecodingConfig:  # how the student answers: evaluate's decoding and `genz-speak chat`'s defaults
    max_new_tokens: PositiveInt = 128
    temperature: NonNegFloat = 0.3  # 0: greedy
    top_p: Annotated[float, Strict(), Field(gt=0.0, le=1.0)] = 0.9  # sampling only
    seed: Int = 0  # sampling only: each batch samples from torch's generator seeded with this
    repetition_penalty: Annotated[float, Strict(), Field(ge=1.0)] = 1.0
    count_prompt: Bool = False  # the penalty and n-gram ban count the prompt (its <|im_end|>) too
    no_repeat_ngram_size: NonNegInt = 3  # > 0: no n-gram of this size twice in the answer (0: off)


@dataclass(config=_STRICT)
class EvaluateConfig:
    judge: Literal["offline", "openai", "both"] = "offline"
    max_validation: NonNegInt = 10
    decoding: DecodingConfig = DecodingConfig()
    batch_size: PositiveInt = 10
    seed: Int = 0
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
    # Max |logit diff| of each GGUF in llama.cpp against the merged folder in transformers. f16 stores a
    # float16 merge exactly, but llama.cpp's f16 kernels round activations to 16 bits on the way.
    f16: PositiveFloat = 0.25
    q8_0: PositiveFloat = 3.0


@dataclass(config=_STRICT)
class ExportConfig:
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = "genz-speak"
    formats: tuple[GgufFormat, ...] = ("f16", "q8_0")
    tolerance: GgufToleranceConfig = GgufToleranceConfig()
    check_prompts: PositiveInt = 3
    # llama.cpp's name for the pre-tokenizer of a byte-level BPE vocabulary (`tokenizer.ggml.pre`), used only
    # when llama.cpp's converter does not recognise the tokenizer by the hash of its sample encodings (it
    # knows SmolLM2, Llama 3, Qwen2/3 and ~100 more); None: such a tokenizer is an error naming this key.
    tokenizer_pre: str | None = None
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
