"""`medo1 eval`'s recipe section (`EvalConfig`) and its error; what each option does is said where it is declared."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from medo1.chat_client import RetryOptions
from medo1.config import Section, StageError
from medo1.eval.published import HUATUO_PRESET
from medo1.rl.rewards.config import AnswerMatchRewardConfig, JudgeRewardConfig, VerifierRewardConfig


class EvalError(StageError):
    """An evaluation that cannot go on (the endpoint keeps failing, a benchmark without a valid row)."""


class EvalVLLMSettings(Section):
    """The offline vLLM engine of `medo1 eval` (one per model evaluated, released before the next loads)."""

    gpu_memory_utilization: float = Field(0.8, gt=0.0, le=1.0)
    """Share of each GPU vLLM may take for the weights and the KV cache (0.8 leaves `medo1 plan`'s 10% headroom
    and allocator slack free on the GPU)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs the model is split over."""
    max_model_len: int | None = None
    """Prompt + answer tokens per sequence; default: the model's own limit. A prompt that leaves no room for
    `max_new_tokens` is refused by vLLM, with this number in the message."""
    max_num_seqs: int | None = Field(None, ge=1)
    """Most sequences decoded together (vLLM's continuous batch); None: vLLM's default (1024 for offline use on an
    80 GB-class GPU), fewer where the KV cache holds fewer."""


class EvalConfig(RetryOptions):
    model: str | None = None
    """Local Hugging Face model directory (or hub id)."""
    endpoint: str | None = None
    """OpenAI-compatible base URL, e.g. http://host:8000/v1."""
    endpoint_model: str | None = None
    """Model name sent to the endpoint; None leaves it out (a server that serves one model)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (never passed as an argument)."""
    benchmarks: dict[str, str] = Field(default_factory=dict)
    """Benchmark name -> a data source of `format` rows (JSON / JSONL / Parquet / CSV file, hf://...); `FILE#SET`
    for one set of a JSON file of named sets ({set name: [rows]}, as the published HuatuoGPT-o1 eval_data.json); such
    a file given whole is one benchmark per set, each named by its set."""
    format: Literal["mcq", "verifiable"] = "mcq"
    """The benchmarks' rows: mcq (question, options, answer letter: MCQ accuracy, and the reward against the letter)
    or verifiable (the RL stage's open-ended problems with their ground-true answers, asked as the RL stage asks
    them and scored by the reward)."""
    fields: dict[str, str] = Field(default_factory=dict)
    """Field name -> column, overriding the format's default names (mcq: question, options, answer_idx, answer;
    verifiable: question `Open-ended Verifiable Question`, answer `Ground-True Answer`)."""
    preset: Literal["huatuo"] | None = None
    """A published evaluation protocol; huatuo: HuatuoGPT-o1's (prompt huatuo, temperature 0.5, top_p 0.9,
    max_new_tokens 2000, one sample, scorer huatuo, table paper). Any of those settings given explicitly wins."""
    prompt: Literal["medo1", "huatuo", "huatuo_strict"] = "medo1"
    """MCQ user turn: medo1 (question, options, "Answer with the letter of the correct option."), or the published
    HuatuoGPT-o1 prompts byte for byte: huatuo, huatuo_strict (asks for "The answer is A.")."""
    scorer: Literal["medo1", "huatuo"] = "medo1"
    """How an MCQ answer is read for the headline accuracy: medo1 (one strict extraction; an unparsed answer is
    wrong) or huatuo (the published scorer: always some option, the better of first-found and last-found per set,
    empty responses left out). Both are always reported."""
    table: Literal["benchmarks", "paper"] = "benchmarks"
    """report.md's first table: one row per benchmark, or the paper's Table 1 layout (MedQA | MedMCQA | PubMedQA |
    Health | Biology | Genetics | Molecular Biology | Avg) and Table 2 layout, one row per model."""
    subjects: dict[str, str] = Field(default_factory=dict)
    """Published set (key or benchmark name) -> the original dataset with each question's subject, for the paper's
    split columns: MMLU-Pro (`category`: health, biology; e.g. hf://TIGER-Lab/MMLU-Pro?split=test) and GPQA
    (`Subdomain`: Genetics, Molecular Biology; e.g. a gpqa_extended.csv). Matched by question text."""
    system_prompt: str | None = None
    """A system message before each question (set it to the RL recipe's `data.system_prompt` to ask the RL
    stage's prompts)."""
    max_new_tokens: int = Field(2048, ge=1)
    """Most tokens generated per answer; answers cut off here are counted per model (`hit_token_cap`)."""
    temperature: float = Field(0.0, ge=0)
    """Sampling temperature; 0 is greedy."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling (temperature > 0): sample from the smallest token set holding this much probability; 1
    keeps all. Local models sample as the RL rollouts do: no top-k, none of the checkpoint's own decoding
    defaults."""
    samples_per_prompt: int = Field(1, ge=1)
    """Responses per question per seed (temperature > 0); a question's scores are averaged over them."""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """Sampling seeds: every model answers every question once per seed (`samples_per_prompt` responses each),
    the same seeds for every model, so that their draws are paired."""
    noise_seeds: list[int] = Field(default_factory=list)
    """More seeds the `baseline` model alone is run under, one run each: its difference from its own run under
    the first of `seeds` is the seed-to-seed noise a gain must exceed."""
    baseline: str | None = None
    """The label every other model is compared with, question by question (a `compare_with` label or `label`);
    None: the last `compare_with` entry (the pipeline's `sft`, the model RL starts from)."""
    repetition_penalty: float = Field(1.0, gt=0)
    """Local models: transformers' repetition penalty (1 is none; above 1 discourages tokens already in the
    prompt or answer). Small models fall into loops under greedy decoding; 1.1-1.2 breaks most of them."""
    batch_size: int = Field(8, ge=1)
    """Questions generated together with a local model by HF generate (each with its `samples_per_prompt`
    responses); vLLM schedules its own batches."""
    engine: Literal["auto", "hf", "vllm"] = "auto"
    """Local models: hf (transformers generate) or vllm (offline batched generation with continuous batching, the
    GPU image's vLLM); auto: vllm where a CUDA GPU is visible and vLLM imports, else hf."""
    vllm: EvalVLLMSettings = Field(default_factory=lambda: EvalVLLMSettings())
    """The vLLM engine's settings (`engine: vllm`, or auto on a GPU)."""
    limit: int | None = Field(None, ge=1)
    """Score only the first N rows of each benchmark (counted from `start_row`)."""
    start_row: int = Field(0, ge=0)
    """First row scored (0-based), e.g. past the demo rows the SFT and RL recipes train on."""
    label: str = Field("model", min_length=1)
    """The name of `model` (or the endpoint) in the comparison table."""
    compare_with: dict[str, str] = Field(default_factory=dict)
    """Label -> local model directory (or hub id) asked the same questions with the same settings, one after
    another, e.g. {base: the pretrained model, sft: the SFT export}; report.md compares them with `model`."""
    reward: AnswerMatchRewardConfig | VerifierRewardConfig | JudgeRewardConfig = Field(
        default_factory=AnswerMatchRewardConfig, discriminator="kind"
    )
    """The RL reward each response gets against the correct option letter or the ground-true answer
    (`kind: answer_match`, `kind: verifier` with a verifier model, or `kind: judge` with a judge endpoint); its
    mean is reported per model."""
    output_dir: str = Field("runs/eval", min_length=1)
    """Where responses.jsonl, report.json and report.md go."""
    concurrency: int = Field(8, ge=1)
    """Endpoint requests in flight at once."""
    timeout_s: float = Field(300.0, gt=0)
    """Seconds one endpoint request may take (a long reasoning answer from a busy server) before it is retried."""
    max_retries: int = Field(2, ge=0)
    """Retries of one endpoint request (timeouts, 429 / 5xx, broken connections): at most 3 x 300 s per question,
    and the run stops once no request has been answered for `give_up_after_s` (300 s)."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") == "huatuo":
            data = HUATUO_PRESET | data
        return data

    @model_validator(mode="after")
    def _one_backend(self) -> EvalConfig:
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("set exactly one of `model` (local model dir) or `endpoint` (OpenAI-compatible URL)")
        if self.label in self.compare_with:
            raise ValueError(f"compare_with: label {self.label!r} is `model`'s own label; pick another")
        if self.temperature == 0 and (self.samples_per_prompt > 1 or len(self.seeds) > 1 or self.noise_seeds):
            raise ValueError(
                "samples_per_prompt > 1, several seeds and noise_seeds need temperature > 0: greedy "
                "decoding gives the same answer every time"
            )
        if len(set(self.seeds)) != len(self.seeds) or set(self.noise_seeds) & set(self.seeds):
            raise ValueError(f"seeds {self.seeds} and noise_seeds {self.noise_seeds} must all differ")
        labels = [*self.compare_with, self.label]
        if self.baseline is not None and self.baseline not in labels:
            raise ValueError(f"baseline {self.baseline!r} is none of the models' labels: {', '.join(labels)}")
        if self.noise_seeds and self.baseline_label is None:
            raise ValueError("noise_seeds re-run the baseline: set compare_with (and baseline)")
        return self

    @property
    def baseline_label(self) -> str | None:
        """The model the others are compared with: `baseline`, else the last `compare_with` entry."""
        if self.baseline is not None:
            return self.baseline
        return next(reversed(self.compare_with), None)
