"""Bad inputs across every stage (issue 18's table): each row runs the real CLI in a fresh interpreter on one
bad input, with an earlier run's outputs already in place, and expects

- its exit code, and exactly one `medo1: error: ...` line whose text (with any indented detail lines under it)
  matches the row's message, and no traceback;
- torch not imported: a bad value or path is refused when the config is read, and a bad file when it is read,
  before any model loads (a tokenizer needs transformers, and eval's scoring imports torch through its reward,
  so the rows that get that far check only that they fail fast);
- every file that was in the workspace before the run byte-identical after it (the earlier outputs: a data
  rejects file, an SFT / RL output directory, a translation and its rejects, an eval's responses and reports,
  the exported model), and no secret value printed.

Remote endpoints are the local OpenAI stand-in (pipelines/openai_standin.py) or a closed port, with retries
and timeouts cut through the stages' own options so that no row waits long.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipelines.openai_standin import StandIn
from tests.conftest import NO_TORCH_LAUNCHER, REPO, TINY_RECIPE, free_port, run_medo1

# Every row runs the real CLI in a fresh interpreter.
pytestmark = pytest.mark.e2e

RL_RECIPE = REPO / "recipes" / "rl-ppo-tiny-cpu.yaml"
KEY = "bad-inputs-key"
LIVE_TOKEN = "LiveValue-7f3a9c2e1d5b8a4f0c6e"
HEX_KEY = "9f2c4e7a1b3d5f608a7c9e1b2d4f6a8c"
# One attempt more and sub-second waits: an unreachable or silent endpoint fails a row in about a second.
FAST_RETRIES = [
    "--set",
    "max_retries=1",
    "--set",
    "backoff_s=0.01",
    "--set",
    "timeout_s=0.3",
    "--set",
    "connect_timeout_s=0.3",
]


def o1(i: int) -> dict:
    return {"Question": f"Q{i}?", "Complex_CoT": f"think {i}", "Response": f"answer {i}"}


def verifiable(i: int) -> dict:
    return {"Open-ended Verifiable Question": f"What is {i} plus one?", "Ground-True Answer": f"{i + 1}"}


def mcq(i: int) -> dict:
    return {"question": f"Question {i}?", "options": {"A": "yes", "B": "no"}, "answer_idx": "A"}


def safetensors_bytes() -> bytes:
    """A valid one-tensor safetensors file (8-byte header length, JSON header, data), written without torch."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return len(header).to_bytes(8, "little") + header + bytes(4)


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


class Bench:
    """A workspace with every stage's earlier outputs in place, its inputs, and the stand-ins a row asks for."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "", "HF_TOKEN": "", "HF_HUB_OFFLINE": "1"}
        self.secrets: list[str] = [KEY]
        self.servers: list[StandIn] = []
        self.o1_json = self.write("data/o1.json", json.dumps([o1(i) for i in range(4)]))
        self.verifiable_json = self.write("data/verifiable.json", json.dumps([verifiable(i) for i in range(3)]))
        self.mcq_json = self.write("data/mcq.json", json.dumps([mcq(i) for i in range(3)]))
        self.model = self.root / "model"
        self.write("model/config.json", json.dumps({"model_type": "qwen2"}))
        self.write("model/model.safetensors", safetensors_bytes())
        # Earlier runs' outputs.
        self.rejects = self.write("data/rejects.jsonl", jsonl([{"row": 3, "problem": "empty", "record": o1(3)}]))
        self.sft_out = self.root / "runs/sft"
        self.rl_out = self.root / "runs/rl"
        for out in (self.sft_out, self.rl_out):
            self.write(out / "checkpoint-4/medo1-complete.json", json.dumps({"step": 4}))
            self.write(out / "checkpoint-4/model.safetensors", safetensors_bytes())
            self.write(out / "metrics.jsonl", jsonl([{"step": s, "loss": 2.0 / s} for s in range(1, 5)]))
            self.write(out / "data_report.json", json.dumps({"rows": 4, "valid": 4, "invalid": 0}))
            self.write(out / "export/model.safetensors", safetensors_bytes())
        self.translated = self.write("runs/ja.jsonl", jsonl([verifiable(i) | {"translated": True} for i in range(3)]))
        self.write("runs/ja.rejects.jsonl", jsonl([{"row": 9, "problem": "earlier reject"}]))
        self.eval_out = self.root / "runs/eval"
        self.write(self.eval_out / "responses.jsonl", jsonl([{"benchmark": "mcq", "row": 0, "response": "A"}]))
        self.write(self.eval_out / "report.json", json.dumps({"average_accuracy": 1.0}))
        self.write(self.eval_out / "report.md", "# Evaluation\n")

    def write(self, rel: str | Path, content: str | bytes) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def standin(self, **options) -> str:
        server = StandIn(api_key=KEY, max_lifetime_s=60, **options).start()
        self.servers.append(server)
        return server.base_url

    def set_env(self, **values: str) -> Bench:
        self.env.update(values)
        self.secrets += [value for value in values.values() if value]
        return self

    def silent(self) -> str:
        """A stand-in that takes requests and never answers within the rows' 0.3 s timeout."""
        return self.standin(faults=["hang"] * 8, hang_s=3)

    @staticmethod
    def closed_url() -> str:
        return f"http://127.0.0.1:{free_port()}/v1"

    def validate(self, path: str | Path, *extra) -> list:
        return ["data", "validate", path, "--format", "medical_o1", "--rejects", self.rejects, *extra]

    def _training(self, stage: list, recipe: Path, out: Path, sets: dict) -> list:
        values = {"model.name_or_path": self.model, "data.path": self.o1_json, "output.dir": out} | sets
        return [*stage, "--config", recipe, *[a for k, v in values.items() for a in ("--set", f"{k}={v}")]]

    def sft(self, **sets) -> list:
        return self._training(["sft"], TINY_RECIPE, self.sft_out, sets)

    def rl(self, *flags, **sets) -> list:
        sets = {"data.path": self.verifiable_json} | sets
        return self._training(["rl", *flags], RL_RECIPE, self.rl_out, sets)

    def translate(self, *extra, source: Path | None = None, output: Path | None = None, base_url: str = "") -> list:
        return [
            "translate",
            source or self.verifiable_json,
            "--output",
            output or self.translated,
            "--format",
            "verifiable",
            "--target-language",
            "Japanese",
            "--base-url",
            base_url or self.standin(),
            "--concurrency",
            "4",
            *FAST_RETRIES,
            *extra,
        ]

    def eval(self, *extra, benchmark: Path | None = None, endpoint: str = "") -> list:
        return [
            "eval",
            "--endpoint",
            endpoint or self.standin(mcq_answers={"Question": "A"}),
            "--benchmark",
            f"mcq={benchmark or self.mcq_json}",
            "--output-dir",
            self.eval_out,
            *FAST_RETRIES,
            *extra,
        ]

    def upload(self, *extra, model: Path | None = None) -> list:
        return ["upload", model or self.model, "--repo-id", "me/medo1-model", "--dry-run", *extra]


@dataclass(frozen=True)
class Row:
    stage: str
    name: str
    command: Callable[[Bench], list]
    """The bad command's arguments (after `medo1`); may add files, stand-ins and environment to the bench."""
    message: str
    """A regex searched in the error: the `medo1: error: ` line and the indented lines under it."""
    exit_code: int = 2
    torch_free: bool = True
    """Fails before torch is imported (False: a row that gets as far as loading a tokenizer, or as eval's
    scoring, whose reward imports torch)."""
    marks: tuple = field(default=())


def latin1(b: Bench, name: str, row: dict) -> Path:
    first = json.dumps(row).encode()
    second = json.dumps(row).replace(next(iter(row.values())), "caf\xe9").encode("latin-1")
    return b.write(name, first + b"\n" + second + b"\n")


def symlink_out(b: Bench) -> list:
    (b.model / "extra_config.json").symlink_to(b.write("outside/private.json", '{"private": true}'))
    return b.upload()


def live_token_in_a_big_file(b: Bench) -> list:
    """The live $HF_TOKEN value (no well-known prefix) at the end of a 6 MB text file."""
    b.set_env(HF_TOKEN=LIVE_TOKEN)
    b.write("model/trainer_state.json", json.dumps({"log_history": ["x" * 6_000_000], "note": LIVE_TOKEN}))
    return b.upload()


def generic_api_key(b: Bench) -> list:
    b.secrets.append(HEX_KEY)
    b.write("model/adapter_config.json", json.dumps({"r": 8, "api_key": HEX_KEY}))
    return b.upload()


def locked(b: Bench) -> Path:
    folder = b.root / "locked"
    folder.mkdir(mode=0o555)
    return folder


HF_SHAPED = "hf_" + "Qx7RmZ2pLk9VbN4tWc8YdJ3sHf6G"  # a Hugging Face token's shape (not a real one)
GITHUB_SHAPED = "ghp_" + "R8mXq2ZpL7vKc4NbT9wYd3JfH6sGa1Ue5Bo0"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtZWRvMSIsImlhdCI6MTcwMDAwMDAwMH0."
    "k3Jq9sZrT2mXw8YvN5bLc7Pd1Fh4Ga6Ue0Ro2Ki9Sx"
)
SFT_7B_RECIPE = REPO / "recipes" / "sft-qwen2.5-7b-8xh100.yaml"


def safetensors_with(metadata: dict | None = None, tensors: dict[str, bytes] | None = None, gap: int = 0) -> bytes:
    """A safetensors file: F32 tensor `w` (4 bytes), then `tensors` as U8, `gap` stray bytes between them."""
    header: dict = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    data, at = bytes(4) + bytes(gap), 4 + gap
    for name, content in (tensors or {}).items():
        header[name] = {"dtype": "U8", "shape": [len(content)], "data_offsets": [at, at + len(content)]}
        data, at = data + content, at + len(content)
    if metadata is not None:
        header["__metadata__"] = metadata
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + data


def gguf_file(b: Bench, rel: str) -> Path:
    """A small valid GGUF file (header, one metadata string, one tensor), written by the gguf package."""
    import numpy as np
    from gguf import GGUFWriter

    path = b.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), "llama")
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    writer.add_tensor("w", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def import_gguf_into_its_folder(b: Bench) -> list:
    """`model import-gguf p/X.gguf p`: p also holds other data (issue 28's reproduction)."""
    b.write("p/data/labels.jsonl", jsonl([{"label": 1}]))
    return ["model", "import-gguf", gguf_file(b, "p/X.gguf"), b.root / "p"]


def cut_gguf(b: Bench) -> list:
    whole = gguf_file(b, "whole.gguf").read_bytes()
    return ["model", "import-gguf", b.write("cut.gguf", whole[: len(whole) // 2]), b.root / "imported"]


def export_over_a_user_folder(b: Bench) -> list:
    b.write("workspace/export/notes.txt", "my notes")
    return b.sft(**{"output.dir": b.root / "workspace"})


def value_model_under_the_output(b: Bench) -> list:
    b.write("vm/value/config.json", json.dumps({"model_type": "qwen2"}))
    return b.rl(**{"ppo.value_model": b.root / "vm/value", "output.dir": b.root / "vm"})


def rejects_linked_to_the_input(b: Bench, kind: str) -> list:
    source = b.write("in.jsonl", jsonl([o1(0), {"Question": "q"}]))
    rejects = b.root / "r.jsonl"
    rejects.symlink_to(source) if kind == "symlink" else os.link(source, rejects)
    return ["data", "validate", source, "--format", "medical_o1", "--rejects", rejects]


def run_dir(b: Bench, metrics: str | bytes) -> Path:
    b.write("runs/cut/config.yaml", "train: {max_grad_norm: 1.0}\n")
    b.write("runs/cut/metrics.jsonl", metrics)
    return b.root / "runs/cut"


def parquet(b: Bench, rel: str, columns: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = b.root / rel
    pq.write_table(pa.table({name: [f"{name} {i}" for i in range(3)] for name in columns}), path)
    return path


def kubeconfig_to_a_closed_port(b: Bench) -> list:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "x",
        "clusters": [
            {"name": "c", "cluster": {"server": f"https://127.0.0.1:{free_port()}", "insecure-skip-tls-verify": True}}
        ],
        "users": [{"name": "u", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
    }
    b.env["KUBECONFIG"] = str(b.write("kubeconfig", json.dumps(config)))
    return ["doctor", "--profile", "cpu-smoke"]


def leak(b: Bench, rel: str, content: str | bytes, *secrets: str) -> list:
    b.secrets += list(secrets)
    b.write(f"model/{rel}", content)
    return b.upload()


def live_token_in(b: Bench, rel: str, encode) -> list:
    b.set_env(HF_TOKEN=LIVE_TOKEN)
    b.write(f"model/{rel}", encode(LIVE_TOKEN))
    return b.upload()


def hard_link_out(b: Bench) -> list:
    os.link(b.write("outside/creds.json", '{"note": "private"}'), b.model / "extra.json")
    return b.upload()


def fifo_in_the_model(b: Bench) -> list:
    os.mkfifo(b.model / "stream.json")
    return b.upload()


ROOT = os.geteuid() == 0
ROWS = [
    # data validate: the earlier rejects file (--rejects) stays as it was.
    Row(
        "data",
        "a directory",
        lambda b: b.validate(b.root / "data"),
        r"data: a directory, not a dataset written by save_to_disk \(no state\.json\); give a data file",
    ),
    Row(
        "data",
        "Latin-1 bytes",
        lambda b: b.validate(latin1(b, "in.jsonl", o1(0))),
        r"in\.jsonl: not UTF-8 text \(byte 0xe9 at line 2\); re-encode it",
    ),
    Row("data", "empty JSONL", lambda b: b.validate(b.write("empty.jsonl", "")), r"empty\.jsonl: no rows"),
    Row(
        "data",
        "corrupt parquet",
        lambda b: b.validate(b.write("rows.parquet", b"PAR1 not really")),
        r"rows\.parquet: cannot be read \(ArrowInvalid: .*magic bytes",
    ),
    Row("data", "missing file", lambda b: b.validate(b.root / "nope.jsonl"), r"nope\.jsonl: file not found"),
    Row(
        "data",
        "unsupported suffix",
        lambda b: b.validate(b.write("rows.txt", "text")),
        r"rows\.txt: unsupported file type '\.txt'; supported: \.json",
    ),
    Row(
        "data",
        "a JSON object, not a list",
        lambda b: b.validate(b.write("obj.json", json.dumps({"data": [o1(0)]}))),
        r"obj\.json: an object of named sets \(data\), not a list of records; name one as \S+obj\.json#SET",
    ),
    Row(
        "data",
        "broken JSON list",
        lambda b: b.validate(b.write("broken.json", '[\n  {"Question": "q"},\n  {oops}\n]\n')),
        r"broken\.json row 1: invalid JSON at line 3 column 4: Expecting property name",
    ),
    Row(
        "data",
        "bad Hub id",
        lambda b: b.validate("hf://just-a-name"),
        r"hf://just-a-name: a Hub dataset is hf://OWNER/NAME",
    ),
    Row(
        "data",
        "missing tokenizer",
        lambda b: b.validate(b.o1_json, "--tokenizer", b.root / "no-tokenizer"),
        r"--tokenizer: .*no-tokenizer does not exist",
    ),
    Row(
        "data",
        "a folder without a tokenizer",
        lambda b: b.validate(b.o1_json, "--tokenizer", b.write("empty-tokenizer/notes.txt", "").parent),
        r"no tokenizer could be loaded from .*empty-tokenizer: ",
        torch_free=False,
    ),
    Row(
        "data",
        "max length 0",
        lambda b: b.validate(b.o1_json, "--max-length", "0"),
        r"--max-length 0: must be at least 1",
    ),
    Row(
        "data",
        "rejects under a file",
        lambda b: b.validate(b.o1_json, "--rejects", b.rejects / "r.jsonl"),
        r"--rejects: .*rejects\.jsonl is a file, not a directory",
    ),
    # sft: the earlier run's checkpoint, metrics, data report and export stay.
    Row(
        "sft",
        "missing model path",
        lambda b: b.sft(**{"model.name_or_path": b.root / "no-model"}),
        r"model\.name_or_path: .*no-model does not exist",
    ),
    Row(
        "sft",
        "model path typo under a local folder",
        lambda b: b.sft(**{"model.name_or_path": "recipes/tiny-modle"}),
        r"recipes/tiny-modle does not exist \(recipes/ is a local directory, so this is not a Hub id\)",
    ),
    Row(
        "sft",
        "max_length 0",
        lambda b: b.sft(**{"data.max_length": 0}),
        r"data\.max_length: Input should be greater than or equal to 1",
    ),
    Row(
        "sft",
        "negative learning rate",
        lambda b: b.sft(**{"train.learning_rate": -1e-5}),
        r"train\.learning_rate: Input should be greater than 0",
    ),
    Row(
        "sft",
        "output dir is a file",
        lambda b: b.sft(**{"output.dir": b.sft_out / "metrics.jsonl"}),
        r"output\.dir: .*metrics\.jsonl is a file, not a directory",
    ),
    Row(
        "sft",
        "read-only output dir",
        lambda b: b.sft(**{"output.dir": locked(b) / "run"}),
        r"output\.dir: .*locked/run is not writable \(.*locked is read-only\)",
        marks=(pytest.mark.skipif(ROOT, reason="root writes to read-only directories"),),
    ),
    Row(
        "sft",
        "missing data file",
        lambda b: b.sft(**{"data.path": b.root / "no-data.json"}),
        r"data\.path: .*no-data\.json does not exist",
    ),
    Row(
        "sft", "bad Hub dataset id", lambda b: b.sft(**{"data.path": "hf://x"}), r"data\.path: hf://x: a Hub dataset is"
    ),
    Row(
        "sft",
        "recipe is not YAML",
        lambda b: ["sft", "--config", b.write("bad.yaml", "model: [unclosed\n")],
        r"recipe .*bad\.yaml is not valid YAML",
    ),
    Row(
        "sft",
        "unknown key",
        lambda b: b.sft(**{"train.learnin_rate": 1}),
        r"train\.learnin_rate: Extra inputs are not permitted",
    ),
    # rl: the earlier run's outputs stay.
    Row(
        "rl",
        "negative learning rate",
        lambda b: b.rl(**{"train.learning_rate": -1}),
        r"train\.learning_rate: Input should be greater than 0",
    ),
    Row(
        "rl",
        "one generation per prompt",
        lambda b: b.rl("--algo", "grpo", **{"grpo.num_generations": 1}),
        r"grpo\.num_generations: Input should be greater than or equal to 2",
    ),
    Row(
        "rl",
        "unknown reward kind",
        lambda b: b.rl(**{"reward.kind": "bogus"}),
        r"reward: Input tag 'bogus' found using 'kind' does not match",
    ),
    Row(
        "rl",
        "missing value model",
        lambda b: b.rl(**{"ppo.value_model": b.root / "no-value-model"}),
        r"ppo\.value_model: .*no-value-model does not exist",
    ),
    Row(
        "rl",
        "missing verifier",
        lambda b: b.rl(**{"reward.kind": "verifier", "reward.model": b.root / "no-verifier"}),
        r"reward\.model: .*no-verifier does not exist",
    ),
    Row("rl", "top_p 0", lambda b: b.rl(**{"sampling.top_p": 0}), r"sampling\.top_p: Input should be greater than 0"),
    Row(
        "rl",
        "output dir is a file",
        lambda b: b.rl(**{"output.dir": b.rl_out / "metrics.jsonl"}),
        r"output\.dir: .*metrics\.jsonl is a file, not a directory",
    ),
    # translate: the earlier translation and its rejects file stay.
    Row(
        "translate",
        "unreachable URL: every record fails",
        lambda b: b.translate(base_url=b.closed_url()),
        r"[1-3] of 3 record\(s\) failed, more than max_failure_ratio=0\.25 allows \(0\).*ConnectError.*"
        r"nothing was written to .*ja\.jsonl",
    ),
    Row(
        "translate",
        "a server that never answers",
        lambda b: b.translate(base_url=b.silent()),
        r"record\(s\) failed, .*timed out after 0\.3 s.*nothing was written to",
    ),
    Row(
        "translate",
        "wrong API key",
        lambda b: b.set_env(OPENAI_API_KEY="wrong-key").translate(),
        r"answered HTTP 401: the API key in \$OPENAI_API_KEY was refused",
    ),
    Row(
        "translate",
        "no API key for the default URL",
        lambda b: b.set_env(OPENAI_API_KEY="").translate(base_url="https://api.openai.com/v1"),
        r"set \$OPENAI_API_KEY to the API key for https://api\.openai\.com/v1",
    ),
    Row(
        "translate",
        "missing input",
        lambda b: b.translate(source=b.root / "no-input.json"),
        r"no-input\.json: file not found",
    ),
    Row(
        "translate",
        "Latin-1 input",
        lambda b: b.translate(source=latin1(b, "v.jsonl", verifiable(0))),
        r"v\.jsonl: not UTF-8 text \(byte 0xe9 at line 2\)",
    ),
    Row(
        "translate",
        "every source row invalid",
        lambda b: b.translate(
            source=b.write("no-answers.json", json.dumps([{"Open-ended Verifiable Question": "Q"}] * 3))
        ),
        r"3 of 3 record\(s\) failed.*field 'Ground-True Answer': source: missing",
    ),
    Row(
        "translate",
        "max failure ratio 1",
        lambda b: b.translate("--max-failure-ratio", "1"),
        r"max_failure_ratio: Input should be less than 1",
    ),
    Row(
        "translate",
        "output is a directory",
        lambda b: b.translate(output=b.root / "runs"),
        r"output: .*runs is a directory, not a file",
    ),
    # eval: the earlier responses.jsonl, report.json and report.md stay.
    Row(
        "eval",
        "unreachable endpoint",
        lambda b: b.eval(endpoint=b.closed_url()),
        r"no answer after 2 attempt\(s\); last: ConnectError",
        torch_free=False,
    ),
    Row(
        "eval",
        "an endpoint that never answers",
        lambda b: b.eval(endpoint=b.silent()),
        r"no answer after 2 attempt\(s\); last: timed out after 0\.3 s",
        torch_free=False,
    ),
    Row(
        "eval",
        "every benchmark row invalid",
        lambda b: b.eval(
            benchmark=b.write("bad-mcq.json", json.dumps([mcq(i) | {"answer_idx": "Z"} for i in range(3)]))
        ),
        r"benchmark 'mcq' \(.*bad-mcq\.json\): none of its 3 row\(s\) is a valid MCQ item; first: .*row 0: "
        r"field 'answer_idx': 'Z' is not one of the options",
    ),
    Row(
        "eval",
        "wrong API key",
        lambda b: b.set_env(OPENAI_API_KEY="wrong-key").eval(),
        r"answered HTTP 401: the API key in \$OPENAI_API_KEY was refused",
        torch_free=False,
    ),
    Row(
        "eval",
        "missing benchmark file",
        lambda b: b.eval(benchmark=b.root / "no-bench.json"),
        r"no-bench\.json: file not found",
    ),
    Row(
        "eval",
        "benchmark without a name",
        lambda b: ["eval", "--endpoint", b.closed_url(), "--benchmark", b.mcq_json],
        r"--benchmark '.*mcq\.json': expected NAME=PATH",
    ),
    Row(
        "eval",
        "both a model and an endpoint",
        lambda b: b.eval("--model", b.model),
        r"set exactly one of `model` \(local model dir\) or `endpoint`",
    ),
    Row(
        "eval",
        "missing model dir",
        lambda b: [
            "eval",
            "--model",
            b.root / "no-model",
            "--benchmark",
            f"mcq={b.mcq_json}",
            "--output-dir",
            b.eval_out,
        ],
        r"model: .*no-model does not exist",
    ),
    Row(
        "eval",
        "missing model to compare with",
        lambda b: b.eval("--set", f"compare_with.base={b.root / 'no-base'}"),
        r"compare_with\.base: .*no-base does not exist",
    ),
    Row(
        "eval",
        "output dir is a file",
        lambda b: b.eval("--output-dir", b.eval_out / "report.json"),
        r"output_dir: .*report\.json is a file, not a directory",
    ),
    Row("eval", "limit 0", lambda b: b.eval("--limit", "0"), r"limit: Input should be greater than or equal to 1"),
    # upload (dry runs but one): the model folder stays as it was, and no secret value is printed.
    Row(
        "upload",
        "symlink out of the model folder",
        symlink_out,
        r"entries leave the model directory:\n  extra_config\.json: resolves to a path outside .*model \(a symlink\)",
    ),
    Row(
        "upload",
        "live token in a 6 MB file",
        live_token_in_a_big_file,
        r"trainer_state\.json: line 1: the live HF_TOKEN value",
    ),
    Row(
        "upload",
        "high-entropy value under api_key",
        generic_api_key,
        r"adapter_config\.json: line 1: a high-entropy value under key 'api_key'",
    ),
    Row(
        "upload",
        "empty weight shard",
        lambda b: b.write("model/model-00002-of-00002.safetensors", b"") and b.upload(),
        r"model-00002-of-00002\.safetensors: empty weight file \(0 bytes\)",
    ),
    Row(
        "upload",
        "missing model folder",
        lambda b: b.upload(model=b.root / "no-export"),
        r"model directory .*no-export does not exist",
    ),
    Row(
        "upload",
        "no token for a real upload",
        lambda b: [a for a in b.upload() if a != "--dry-run"],
        r"HF_TOKEN is not set: export a Hugging Face write token",
    ),
    Row(
        "upload",
        "missing eval report",
        lambda b: b.upload("--eval-report", b.root / "no-report.json"),
        r"eval report .*no-report\.json not found",
    ),
    Row("upload", "no repo id", lambda b: ["upload", b.model, "--dry-run"], r"repo_id: Field required"),
    # Issue 28. Data loss: an output that is an input, or a folder medo1 did not write.
    Row(
        "data",
        "rejects file is the input",
        lambda b: [
            "data",
            "validate",
            p := b.write("in.jsonl", jsonl([o1(0), {"Question": "q"}])),
            "--format",
            "medical_o1",
            "--rejects",
            p,
        ],
        r"--rejects: .*in\.jsonl is the data file itself \(.*in\.jsonl\); writing there would replace the input",
    ),
    Row(
        "data",
        "rejects file is a symlink to the input",
        lambda b: rejects_linked_to_the_input(b, "symlink"),
        r"--rejects: .*r\.jsonl is the data file itself",
    ),
    Row(
        "data",
        "rejects file is a hard link of the input",
        lambda b: rejects_linked_to_the_input(b, "hard link"),
        r"--rejects: .*r\.jsonl is the data file itself",
    ),
    Row(
        "translate",
        "output is the input",
        lambda b: b.translate(output=b.verifiable_json),
        r"output: .*verifiable\.json is input itself",
    ),
    Row(
        "translate",
        "the default rejects file is the input",
        lambda b: b.translate(
            source=b.write("runs/v.rejects.jsonl", jsonl([verifiable(i) for i in range(3)])),
            output=b.root / "runs/v.jsonl",
        ),
        r"rejects: .*v\.rejects\.jsonl is input itself",
    ),
    Row(
        "translate",
        "cache folder holds the input",
        lambda b: b.translate("--set", f"cache_dir={b.root / 'data'}"),
        r"cache_dir: .*data holds input \(.*verifiable\.json\)",
    ),
    Row(
        "translate",
        "rejects file is the output",
        lambda b: b.translate("--set", f"rejects={b.translated}"),
        r"rejects: .*ja\.jsonl is also output; give each output its own path",
    ),
    Row(
        "sft",
        "output dir holds the data",
        lambda b: b.sft(**{"output.dir": b.root / "data"}),
        r"output\.dir: .*data holds data\.path \(.*o1\.json\)",
    ),
    Row(
        "sft",
        "output dir is the model",
        lambda b: b.sft(**{"output.dir": b.model}),
        r"output\.dir: .*model is model\.name_or_path itself",
    ),
    Row(
        "sft",
        "a folder of the user's where the export goes",
        export_over_a_user_folder,
        r"output\.dir: export: .*workspace/export is a folder medo1 did not write \(no \.medo1 marker in it\)",
    ),
    Row(
        "rl",
        "output dir holds the value model",
        value_model_under_the_output,
        r"output\.dir: .*vm holds ppo\.value_model",
    ),
    Row(
        "eval",
        "output dir holds the benchmark",
        lambda b: b.eval("--output-dir", b.root / "data"),
        r"output_dir: .*data holds benchmarks\.mcq \(.*mcq\.json\)",
    ),
    Row(
        "model",
        "import-gguf into the folder holding the GGUF",
        import_gguf_into_its_folder,
        r"out: .*p holds source \(.*X\.gguf\)",
    ),
    Row(
        "model",
        "import-gguf into a folder medo1 did not write",
        lambda b: ["model", "import-gguf", gguf_file(b, "X.gguf"), b.root / "data"],
        r"out: .*data is a folder medo1 did not write",
    ),
    Row(
        "model",
        "init-tiny into a folder medo1 did not write",
        lambda b: ["model", "init-tiny", b.root / "data"],
        r"out: .*data is a folder medo1 did not write",
        torch_free=False,
    ),
    # Issue 28. Tracebacks and unclear messages.
    Row(
        "model",
        "import-gguf of an empty file",
        lambda b: ["model", "import-gguf", b.write("e.gguf", b""), b.root / "o"],
        r"e\.gguf: empty file \(0 bytes\), not a GGUF model",
    ),
    Row(
        "model",
        "import-gguf of random bytes",
        lambda b: ["model", "import-gguf", b.write("r.gguf", bytes(range(256)) * 4), b.root / "o"],
        r"r\.gguf: not a GGUF file \(it does not start with the GGUF magic bytes\)",
    ),
    Row("model", "import-gguf of a cut-off file", cut_gguf, r"cut\.gguf: truncated or corrupt GGUF file \(\d+ bytes; "),
    Row(
        "model",
        "import-gguf of a missing text file",
        lambda b: ["model", "import-gguf", "notgguf.txt", b.root / "o"],
        r"^medo1: error: notgguf\.txt: file not found \(a \.gguf file, or an installed package that ships one\)$",
    ),
    Row(
        "report",
        "a cut-off metrics.jsonl",
        lambda b: ["report", run_dir(b, '{"step": 1, "loss": 2.0}\n{"step": 2, "lo')],
        r"metrics\.jsonl line 2: not JSON \(at column \d+: Unterminated string\)",
    ),
    Row(
        "report",
        "a binary metrics.jsonl",
        lambda b: ["report", run_dir(b, b"\x89PNG\r\n\x1a\n\x00\xff\xfe")],
        r"metrics\.jsonl: not UTF-8 text \(byte 0x89 at line 1\); is it the run's own file\?",
    ),
    Row(
        "report",
        "a metrics.jsonl row that is a list",
        lambda b: ["report", run_dir(b, '["step", 1]\n')],
        r"metrics\.jsonl line 1: expected a JSON object, got list",
    ),
    Row(
        "report",
        "a step that is text",
        lambda b: ["report", run_dir(b, '{"step": "two", "loss": 1.0}\n')],
        r"metrics\.jsonl line 1: field 'step': expected a number, got \"two\"",
    ),
    Row(
        "report",
        "not a run directory",
        lambda b: ["report", b.root / "data"],
        r"data: not a medo1 run directory \(no metrics\.jsonl, config\.yaml, data_report\.json",
    ),
    Row(
        "data",
        "a Hub query field without a value",
        lambda b: b.validate("hf://owner/name?split"),
        r"hf://owner/name\?split: malformed query 'split'; a Hub dataset is hf://OWNER/NAME",
    ),
    Row(
        "data",
        "a Hub query parameter twice",
        lambda b: b.validate("hf://owner/name?split=a&split=b"),
        r"parameter\(s\) split given more than once",
    ),
    Row(
        "data",
        "an upper-case Hub prefix",
        lambda b: b.validate("HF://owner/name"),
        r"HF://owner/name: the Hub prefix is lower-case: hf://owner/name",
    ),
    Row(
        "sft",
        "an upper-case Hub prefix",
        lambda b: b.sft(**{"data.path": "HF://owner/name"}),
        r"data\.path: HF://owner/name: the Hub prefix is lower-case",
    ),
    Row(
        "translate",
        "parquet with other columns",
        lambda b: b.translate(source=parquet(b, "cols.parquet", ["prompt", "answer"])),
        r"3 of 3 record\(s\) failed.*field 'Open-ended Verifiable Question': source: missing \(the row's columns: "
        r"prompt, answer\)",
        torch_free=False,
    ),
    Row(
        "translate",
        "a JSON line cut in a string",
        lambda b: b.translate(
            source=b.write(
                "cut.jsonl", jsonl([verifiable(0), verifiable(1)]) + '{"Open-ended Verifiable Question": "Wh'
            )
        ),
        r"row 2 \(line 3\): invalid JSON at column \d+: Unterminated string; ",
    ),
    Row(
        "eval",
        "compare_with a folder that is not a model",
        lambda b: b.eval("--set", f"compare_with.base={b.write('not-a-model/notes.txt', 'notes').parent}"),
        r"no tokenizer could be loaded from .*not-a-model: .*it holds no config\.json: point at a model folder, such as "
        r"a training run's OUTPUT/export$",
        torch_free=False,
    ),
    Row(
        "plan",
        "0 nodes",
        lambda b: ["plan", "--config", SFT_7B_RECIPE, "--nodes", "0"],
        r"--nodes 0: Input should be greater than or equal to 1",
    ),
    Row(
        "plan",
        "negative GPUs",
        lambda b: ["plan", "--config", SFT_7B_RECIPE, "--gpus-per-node", "-8"],
        r"--gpus-per-node -8: Input should be greater than or equal to 0",
    ),
    Row(
        "plan",
        "headroom 1",
        lambda b: ["plan", "--config", SFT_7B_RECIPE, "--headroom", "1"],
        r"--headroom 1\.0: Input should be less than 1",
    ),
    Row(
        "plan",
        "MFU NaN and a negative price",
        lambda b: ["plan", "--config", SFT_7B_RECIPE, "--mfu", "nan", "--price-per-gpu-hour", "-2"],
        r"--mfu nan: Input should be a finite number; --price-per-gpu-hour -2\.0: Input should be greater than or equal to 0",
    ),
    Row(
        "launch",
        "a negative timeout",
        lambda b: ["launch", "sft", "--backend", "local", "--timeout", "-5"],
        r"--timeout -5: must be a finite number of seconds above 0",
    ),
    Row("doctor", "an unknown profile", lambda b: ["doctor", "--profile", "nope"], r"no profile 'nope' in .*; known: "),
    Row(
        "doctor",
        "the API server's port is closed",
        kubeconfig_to_a_closed_port,
        r"the Kubernetes API server at https://127\.0\.0\.1:\d+ could not be reached \(.*Connection refused\)",
    ),
    Row(
        "upload",
        "a path for a repo id",
        lambda b: ["upload", b.model, "--repo-id", "../../etc", "--dry-run"],
        r"repo_id: Value error, '\.\./\.\./etc' is not a Hub repo id",
    ),
    # Issue 28. Leaks: what a real upload would send.
    Row(
        "upload",
        "a token in the safetensors metadata",
        lambda b: leak(b, "model.safetensors", safetensors_with({"note": HF_SHAPED}), HF_SHAPED),
        r"model\.safetensors: header: what looks like a Hugging Face token",
    ),
    Row(
        "upload",
        "a token in a byte tensor",
        lambda b: leak(
            b, "model.safetensors", safetensors_with(tensors={"notes": f"push with {HF_SHAPED}".encode()}), HF_SHAPED
        ),
        r"model\.safetensors: tensor 'notes': what looks like a Hugging Face token",
    ),
    Row(
        "upload",
        "bytes no tensor describes",
        lambda b: leak(b, "model.safetensors", safetensors_with(tensors={"b": b"abcd"}, gap=64)),
        r"model\.safetensors: bytes \d+-\d+ are in no tensor",
    ),
    Row(
        "upload",
        "a JSON-escaped token",
        lambda b: leak(b, "extra.json", '{"t": "hf\\u005f' + HF_SHAPED[3:] + '"}', HF_SHAPED),
        r"extra\.json: line 1: what looks like a Hugging Face token",
    ),
    Row(
        "upload",
        "the live token in a UTF-16 file",
        lambda b: live_token_in(b, "notes.json", lambda t: json.dumps({"n": t}).encode("utf-16")),
        r"notes\.json: line 1: the live HF_TOKEN value",
    ),
    Row(
        "upload",
        "the live token base64-encoded",
        lambda b: live_token_in(
            b, "deploy.json", lambda t: json.dumps({"data": {"value": base64.b64encode(f"user:{t}".encode()).decode()}})
        ),
        r"deploy\.json: line 1: the live HF_TOKEN value \(base64-encoded\)",
    ),
    Row(
        "upload",
        "the live token in tokenizer.model",
        lambda b: live_token_in(b, "tokenizer.model", lambda t: b"\n\x0c\n\x05<unk>\x15\x00\x00\x00\x00" + t.encode()),
        r"tokenizer\.model: line \d+: the live HF_TOKEN value",
    ),
    Row(
        "upload",
        "a bearer JWT",
        lambda b: leak(b, "headers.json", json.dumps({"Authorization": f"Bearer {JWT}"}), JWT),
        r"headers\.json: line 1: what looks like JSON Web Token \(detect-secrets\)",
    ),
    Row(
        "upload",
        "a token in a URL's user-info",
        lambda b: leak(
            b, "remote.json", json.dumps({"url": f"https://{GITHUB_SHAPED}@github.com/org/repo"}), GITHUB_SHAPED
        ),
        r"remote\.json: line 1: what looks like GitHub Token \(detect-secrets\)",
    ),
    Row(
        "upload",
        "a password in a connection string",
        lambda b: leak(b, "db.json", json.dumps({"dsn": "postgresql://admin:Tr0ub4dor@db:5432/x"}), "Tr0ub4dor"),
        r"db\.json: line 1: what looks like Basic Auth Credentials \(detect-secrets\)",
    ),
    Row(
        "upload",
        "a token in a file name",
        lambda b: leak(b, f"{HF_SHAPED}.json", "{}", HF_SHAPED),
        r"hf_\*\*\*: the file name holds a Hugging Face token",
    ),
    Row(
        "upload",
        "a token in the commit message",
        lambda b: leak(b, "README.md", "# card\n", HF_SHAPED) + ["--set", f"commit_message=push {HF_SHAPED}"],
        r"the commit message contains what looks like a Hugging Face token",
    ),
    Row(
        "upload",
        "a hard link to a file outside",
        hard_link_out,
        r"extra\.json: a hard link to a file with 1 other name\(s\) outside .*model",
    ),
    Row("upload", "a FIFO in the folder", fifo_in_the_model, r"stream\.json: a FIFO, not a file \(refused unread\)"),
]


def snapshot(root: Path) -> dict[str, bytes]:
    files = (p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def error_text(stderr: str) -> str:
    """The `medo1: error: ` line and the indented detail lines right under it."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("medo1: error: "))
    end = start + 1
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    return "\n".join(lines[start:end])


@pytest.fixture
def bench(tmp_path: Path):
    bench = Bench(tmp_path)
    yield bench
    for server in bench.servers:
        server.stop()


@pytest.mark.parametrize("row", [pytest.param(row, id=f"{row.stage}: {row.name}", marks=row.marks) for row in ROWS])
def test_a_bad_input_is_one_clear_error_and_loses_no_earlier_output(bench: Bench, row: Row):
    args = row.command(bench)
    before = snapshot(bench.root)
    started = time.monotonic()
    done = run_medo1(args, env=bench.env, timeout=60, launcher=NO_TORCH_LAUNCHER)
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == row.exit_code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert sum(line.startswith("medo1: error: ") for line in done.stderr.splitlines()) == 1, done.stderr[-3000:]
    assert re.search(row.message, error_text(done.stderr), re.DOTALL), error_text(done.stderr)
    if row.torch_free:
        assert "torch not imported" in done.stdout
    after = snapshot(bench.root)
    lost = [name for name, content in before.items() if after.get(name) != content]
    assert not lost, f"earlier output lost or changed: {lost}"
    assert not [secret for secret in bench.secrets if secret in output], "a secret value was printed"
    assert elapsed < 45, (
        elapsed
    )  # a bound against the default 120 s x 6 waits (loose: CI runs it beside the image builds)


def test_the_table_covers_every_stage():
    stages = ("data", "sft", "rl", "translate", "eval", "upload", "model", "report", "plan", "launch", "doctor")
    counts = {stage: sum(row.stage == stage for row in ROWS) for stage in stages}
    assert sum(counts.values()) == len(ROWS) >= 25
    assert min(counts[stage] for stage in stages[:6]) >= 3, counts
