"""Tests for medo1.rl.rewards: the format rule, a real tiny verifier, load errors, the rule-based
match, the TRL adapter and config-driven construction. No mocks: the verifier is a real
Qwen2ForSequenceClassification (tests/helpers.py's save_verifier makes it) whose weights are set so that its
verdict is a known number.

How the tiny verifier is made deterministic: every decoder layer's output projections are zeroed,
so a token's final hidden state is RMSNorm(its embedding). All embeddings are zero except the
eos token's (all ones), and the score head reads only hidden unit 0 into the "True" logit. So the
verifier gives P(True) = p exactly when it pools the eos token that ends the prompt, and 0.5 on
any other token: a prompt without the eos, a wrong pooled position or the wrong class index all
change the number.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from medo1.data.final_response import parse_response
from medo1.data.sources import reasoning_target
from medo1.models import load_tokenizer
from medo1.rl.rewards.answer_match import AnswerMatchReward
from medo1.rl.rewards.config import AnswerMatchRewardConfig, RewardConfig, VerifierRewardConfig
from medo1.rl.rewards.factory import build_reward, trl_reward_funcs
from medo1.rl.rewards.verifier import RewardLoadError, VerifierReward
from tests.helpers import save_verifier

COT = "The patient has polyuria and a fasting glucose of 9 mmol/L; first-line therapy is metformin."
GOOD = reasoning_target(COT, "Start metformin.")
WRONG = reasoning_target(COT, "Start insulin glargine.")
TWO_FINALS = GOOD + "\n\n## Final Response\n\nInsulin."
TWO_THINKINGS = "## Thinking\n\nFirst pass.\n\n" + GOOD
NO_HEADERS = "Start metformin."
NO_BLANK_AFTER_FINAL = f"## Thinking\n\n{COT}\n\n## Final Response\nStart metformin."
EMPTY_ANSWER = f"## Thinking\n\n{COT}\n\n## Final Response\n\n   \n"

# Reference for every response above.
REF = "Metformin"


# ------------------------------------------------------------------------------------------------
# Tiny verifiers


@pytest.fixture(scope="module")
def verifier_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verifiers")
    return {
        # P(True) = 0.6 > 0.4 -> reward 1.0
        "yes": save_verifier(root / "yes", 0.6),
        # P(True) = 0.3 -> reward 0.1. The model's pad id is not the id its tokenizer pads with
        # (the classifier pools the rightmost token that is not the model's pad id).
        "no": save_verifier(root / "no", 0.3, config_pad="<|fim_pad|>"),
        # Own tokenizer unlike the policy's: eos <|endoftext|>, no pad token, no pad id in the model
        # config, and the "True" class first (label names in upper case).
        "own": save_verifier(
            root / "own",
            0.3,
            true_index=0,
            label2id={"TRUE": 0, "FALSE": 1},
            eos_token="<|endoftext|>",
            tokenizer_has_pad=False,
            config_pad=False,
        ),
    }


@pytest.fixture(scope="module")
def verifier_yes(verifier_dirs) -> VerifierReward:
    return VerifierReward(VerifierRewardConfig(model=str(verifier_dirs["yes"])))


@pytest.fixture(scope="module")
def verifier_no(verifier_dirs) -> VerifierReward:
    return VerifierReward(VerifierRewardConfig(model=str(verifier_dirs["no"]), batch_size=2))


# ------------------------------------------------------------------------------------------------
# Format rule


@pytest.mark.parametrize(
    "text, ok, answer",
    [
        (GOOD, True, "Start metformin."),
        (WRONG, True, "Start insulin glargine."),
        (TWO_FINALS, False, None),
        (TWO_THINKINGS, False, None),
        (NO_HEADERS, False, None),
        (NO_BLANK_AFTER_FINAL, False, None),
        (EMPTY_ANSWER, True, ""),
        # "## Final Response" without the blank line may appear once more in the thinking.
        ("## Thinking\n\nDraft the ## Final Response: later.\n\n## Final Response\n\n  B.  ", True, "B."),
    ],
    ids=["good", "wrong", "two-finals", "two-thinkings", "none", "no-blank-line", "empty-answer", "header-in-cot"],
)
def test_parse_response(text, ok, answer):
    parsed = parse_response(text)
    assert parsed.format_ok is ok
    assert parsed.answer == answer


def test_parse_reasoning_on_real_sft_targets(demo_rows):
    for row in demo_rows[:20]:
        parsed = parse_response(reasoning_target(row["Complex_CoT"], row["Response"]))
        assert parsed.format_ok
        assert parsed.answer == row["Response"].strip()


# ------------------------------------------------------------------------------------------------
# Verifier


def test_verifier_rewards_and_scores(verifier_yes, verifier_no):
    responses = [GOOD, WRONG, TWO_FINALS, TWO_THINKINGS, NO_HEADERS, NO_BLANK_AFTER_FINAL, EMPTY_ANSWER]
    refs = [REF] * len(responses)
    format_ok = [True, True, False, False, False, False, True]

    yes = verifier_yes(responses, refs)
    assert yes.format_ok == format_ok
    assert yes.rewards == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert yes.correct == [True, True, False, False, False, False, True]
    # Bad format never reaches the model; the empty answer does.
    assert [s is None for s in yes.scores] == [not ok for ok in format_ok]
    for s in yes.scores:
        assert s is None or abs(s - 0.6) < 1e-5

    no = verifier_no(responses, refs)
    assert no.rewards == [0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.1]
    assert no.correct == [False] * len(responses)
    for s in no.scores:
        assert s is None or abs(s - 0.3) < 1e-5


def test_verifier_threshold_and_reward_values(verifier_yes):
    strict = verifier_yes.config.model_copy(
        update={"threshold": 0.65, "reward_correct": 2.0, "reward_wrong": -1.0, "reward_bad_format": -3.0}
    )
    original, verifier_yes.config = verifier_yes.config, strict
    try:
        out = verifier_yes([GOOD, NO_HEADERS], [REF, REF])
    finally:
        verifier_yes.config = original
    assert out.rewards == [-1.0, -3.0]  # 0.6 is not above 0.65
    assert out.correct == [False, False]
    # Correct means strictly above the threshold.
    score = verifier_yes([GOOD], [REF]).scores[0]
    verifier_yes.config = original.model_copy(update={"threshold": score})
    try:
        assert verifier_yes([GOOD], [REF]).rewards == [0.1]
    finally:
        verifier_yes.config = original


def test_verifier_batches_with_padding_on_either_side(verifier_no):
    # Answers of very different lengths in one batch: padding must not move the pooled token off eos.
    answers = ["B", "Start metformin 500 mg twice daily with meals. " * 20, "No.", "x " * 50]
    refs = ["B", "metformin", "Yes, it is the best option here.", "y"]
    for side in ("right", "left"):
        verifier_no.tokenizer.padding_side = side
        try:
            probs = verifier_no.probabilities(answers, refs)
        finally:
            verifier_no.tokenizer.padding_side = "right"
        assert len(probs) == len(answers)
        assert all(abs(p - 0.3) < 1e-5 for p in probs), (side, probs)


# The published verifier input (HuatuoGPT-o1's RL reward code), typed out here rather than imported, with
# "Start metformin." / "Metformin 500 mg" / the Qwen eos filled in.
PUBLISHED_VERIFIER_INPUT = (
    "<Model Response>\n"
    "Start metformin.\n"
    "</Model Response>\n"
    "\n"
    "<Reference Answer>\n"
    "Metformin 500 mg\n"
    "</Reference Answer>\n"
    "\n"
    "Your task is to evaluate the model response by comparing it to the reference answer. If the model response is "
    'correct and aligns with the reference answer, output "True" . If it is incorrect or fails to select the correct '
    'option (if options are provided), output "False" . <|im_end|>'
)


def test_verifier_prompt_is_the_published_one_byte_for_byte(verifier_no):
    prompt = verifier_no.format_prompt("Start metformin.", "Metformin 500 mg")
    assert prompt.encode() == PUBLISHED_VERIFIER_INPUT.encode()
    assert verifier_no.tokenizer.eos_token == "<|im_end|>"
    ids = verifier_no.encode("Start metformin.", "Metformin 500 mg")
    assert ids == verifier_no.tokenizer(PUBLISHED_VERIFIER_INPUT, add_special_tokens=False)["input_ids"]
    assert ids[-1] == verifier_no.tokenizer.eos_token_id
    assert verifier_no.tokenizer.decode(ids) == prompt
    # The answer is the stripped text after "## Final Response\n\n", as published.
    response = reasoning_target(COT, "  Start metformin.  \n")
    assert verifier_no.format_prompt(parse_response(response).answer, "Metformin 500 mg") == PUBLISHED_VERIFIER_INPUT


def test_verifier_tokenizes_without_special_tokens(tmp_path):
    """A verifier tokenizer that prepends a BOS (as Llama-3's does) must not get one in the prompt."""
    from tokenizers import processors

    path = save_verifier(tmp_path / "bos", 0.6)
    tokenizer = load_tokenizer(path)
    bos = "<|fim_prefix|>"
    bos_id = tokenizer.convert_tokens_to_ids(bos)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bos_id)]
    )
    tokenizer.bos_token = bos
    tokenizer.save_pretrained(path)
    reward = VerifierReward(VerifierRewardConfig(model=str(path)))
    prompt = reward.format_prompt("Start metformin.", "Metformin")
    assert reward.tokenizer(prompt)["input_ids"][0] == bos_id  # the tokenizer does add one by default
    ids = reward.encode("Start metformin.", "Metformin")
    assert bos_id not in ids
    assert ids == reward.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reward.config = reward.config.model_copy(update={"max_length": 96})  # the shortening path too
    long_ids = reward.encode("Metformin lowers hepatic glucose output " * 40, "Metformin")
    assert bos_id not in long_ids and len(long_ids) <= 96 and long_ids[-1] == reward.tokenizer.eos_token_id


def test_verifier_custom_template(verifier_dirs, verifier_no):
    original = verifier_no.config
    verifier_no.config = original.model_copy(update={"prompt_template": "A: {answer}\nR: {reference}\nOK?{eos}"})
    try:
        assert verifier_no.format_prompt("x", "y") == "A: x\nR: y\nOK?<|im_end|>"
    finally:
        verifier_no.config = original
    for template, field in (
        ("{answer} only{eos}", "reference"),
        ("{response} {reference}{eos}", "response"),  # the old placeholder name
        ("{answer} {reference}", "eos"),
        ("{answer} {reference} {eos} {answer}", "once"),
    ):
        with pytest.raises(ValidationError, match=field):
            VerifierRewardConfig(model=str(verifier_dirs["no"]), prompt_template=template)


def test_verifier_overlong_prompt_keeps_reference_and_eos(verifier_no):
    original = verifier_no.config
    verifier_no.config = original.model_copy(update={"max_length": 96})
    try:
        answer = "Metformin is first line because " + "it lowers hepatic glucose output " * 60
        ids = verifier_no.encode(answer, "Metformin")
        out = verifier_no([reasoning_target(COT, answer)], ["Metformin"])
    finally:
        verifier_no.config = original
    assert len(ids) <= 96
    assert ids[-1] == verifier_no.tokenizer.eos_token_id
    text = verifier_no.tokenizer.decode(ids)
    assert "<Reference Answer>\nMetformin\n</Reference Answer>" in text
    assert text.endswith('output "False" . <|im_end|>')
    assert text.startswith("<Model Response>\nMetformin is first line because")
    assert abs(out.scores[0] - 0.3) < 1e-5


def test_verifier_with_its_own_tokenizer(verifier_dirs):
    """The verifier's tokenizer (eos <|endoftext|>, no pad) is not the policy's (eos <|im_end|>)."""
    reward = VerifierReward(VerifierRewardConfig(model=str(verifier_dirs["own"]), batch_size=4))
    policy_eos = load_tokenizer(verifier_dirs["yes"]).eos_token  # the bundled Qwen tokenizer
    assert reward.tokenizer.eos_token == "<|endoftext|>" != policy_eos
    assert reward.tokenizer.pad_token == reward.tokenizer.eos_token  # filled in at load
    assert reward.true_index == 0  # from label2id {"TRUE": 0, "FALSE": 1}
    assert reward.format_prompt("a", "b").endswith("<|endoftext|>")
    # A prompt ending in the policy's eos would score 0.5; class index 1 would give 0.7.
    out = reward([GOOD, WRONG, EMPTY_ANSWER, NO_HEADERS], [REF, "Insulin glargine 10 units at night", REF, REF])
    assert out.rewards == [0.1, 0.1, 0.1, 0.0]
    assert all(abs(s - 0.3) < 1e-5 for s in out.scores[:3])


def test_verifier_tokenizer_path_option(verifier_dirs, verifier_no):
    reward = VerifierReward(VerifierRewardConfig(model=str(verifier_dirs["no"]), tokenizer=str(verifier_dirs["own"])))
    assert reward.tokenizer.eos_token == "<|endoftext|>"
    assert verifier_no.config.tokenizer is None and verifier_no.tokenizer.eos_token == "<|im_end|>"


# ------------------------------------------------------------------------------------------------
# Load errors at start-up


def test_missing_verifier_dir(tmp_path):
    missing = tmp_path / "no-such-verifier"
    with pytest.raises(RewardLoadError, match=re.escape(str(missing))) as err:
        VerifierReward(VerifierRewardConfig(model=str(missing)))
    assert "does not exist" in str(err.value)


def test_three_class_verifier(tmp_path):
    path = save_verifier(tmp_path / "three", 0.5, num_labels=3, label2id={"False": 0, "True": 1, "Unsure": 2})
    with pytest.raises(RewardLoadError, match=re.escape(str(path))) as err:
        build_reward(VerifierRewardConfig(model=str(path)))
    assert "num_labels=3" in str(err.value)


def test_causal_lm_is_not_a_verifier(tiny_model):
    # Loading a causal LM as a classifier would silently give it a random 2-class head.
    with pytest.raises(RewardLoadError, match=re.escape(str(tiny_model))) as err:
        VerifierReward(VerifierRewardConfig(model=str(tiny_model)))
    assert "not a sequence classifier" in str(err.value)


def test_checkpoint_without_head_weights(tiny_model, tmp_path):
    # A config that names no architecture, over causal-LM weights: the score head would be random.
    path = tmp_path / "headless"
    shutil.copytree(tiny_model, path)
    config = json.loads((path / "config.json").read_text())
    config.pop("architectures", None)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RewardLoadError, match=re.escape(str(path))) as err:
        VerifierReward(VerifierRewardConfig(model=str(path)))
    assert "score.weight" in str(err.value)


def test_missing_tokenizer_dir(verifier_dirs, tmp_path):
    with pytest.raises(RewardLoadError, match="tokenizer"):
        VerifierReward(VerifierRewardConfig(model=str(verifier_dirs["no"]), tokenizer=str(tmp_path / "gone")))


# ------------------------------------------------------------------------------------------------
# Rule-based match

MATCH_TABLE = [
    # (answer, reference, correct)
    ("Metformin", "Metformin", True),
    ("METFORMIN!", "metformin", True),
    ("ＭＥＴＦＯＲＭＩＮ", "Metformin", True),  # full-width letters, NFKC
    ("tetralogy of Fallot", "The Tetralogy of Fallot.", True),
    ("Crohn’s disease", "Crohn's disease", True),
    ("The most likely cause is acute pancreatitis from gallstones.", "Acute pancreatitis", True),
    ("Start metformin, 500 mg daily.", "metformin", True),
    ("Metforminum", "Metformin", False),
    ("Chronic pancreatitis", "Acute pancreatitis", False),
    ("Insulin glargine", "Metformin", False),
    ("", "Metformin", False),
    ("Anything", "", False),
    ("", "", False),  # an empty answer never matches an empty reference
    ("A", "the", False),  # a reference that normalises to nothing
    # Multiple choice: the letter alone decides.
    ("B", "B", True),
    ("B.", "B", True),
    ("b", "B", True),
    ("(B) Folate deficiency", "B", True),
    ("B: Folate deficiency", "B", True),
    ("B folate deficiency", "B", True),
    ("The answer is B", "B", True),
    ("The correct answer is option (B), folate deficiency.", "B", True),
    ("Answer: B", "(B)", True),
    ("C", "B", False),
    ("(C) Iron deficiency", "B", False),
    ("Vitamin B12 deficiency", "B", False),
    ("Vitamin B deficiency", "B", False),
    ("Bacterial meningitis", "B", False),
    ("The answer is C, not B", "B", False),
    ("A.", "A", True),
    ("(A) Caustic ingestion", "A", True),
    ("The answer is A", "A", True),
    ("A patient like this needs surgery", "A", False),
    ("The answer is a beta blocker", "A", False),
    ("E", "e.", True),
]


@pytest.mark.parametrize("answer, reference, correct", MATCH_TABLE)
def test_answer_match_rule(answer, reference, correct):
    assert AnswerMatchReward.matches(answer, reference) is correct


def test_answer_match_rewards():
    reward = AnswerMatchReward(AnswerMatchRewardConfig())
    responses = [
        reasoning_target(COT, "Metformin."),
        reasoning_target(COT, "(B) Folate deficiency"),
        reasoning_target(COT, "Start insulin."),
        reasoning_target(COT, "C"),
        TWO_FINALS,
        NO_BLANK_AFTER_FINAL,
        EMPTY_ANSWER,
    ]
    refs = ["metformin", "B", "metformin", "B", "metformin", "metformin", "metformin"]
    out = reward(responses, refs)
    assert out.rewards == [1.0, 1.0, 0.1, 0.1, 0.0, 0.0, 0.1]
    assert out.correct == [True, True, False, False, False, False, False]
    assert out.format_ok == [True, True, True, True, False, False, True]
    assert out.scores == [None] * 7


def test_answer_match_on_demo_rows(demo_rows):
    reward = AnswerMatchReward()
    rows = demo_rows[:12]
    responses = [reasoning_target(r["Complex_CoT"], r["Response"]) for r in rows]
    # Each row's MCQ letter given as the answer is right for its own row and wrong for another's.
    letters = [reasoning_target(r["Complex_CoT"], f"({r['answer_idx']}) {r['answer']}") for r in rows]
    own = reward(letters, [r["answer_idx"] for r in rows])
    assert own.rewards == [1.0] * len(rows)
    shifted = [r["answer_idx"] for r in rows[1:] + rows[:1]]
    other = reward(letters, shifted)
    assert [c for c in other.correct] == [a == b for a, b in zip([r["answer_idx"] for r in rows], shifted)]
    # The open-ended answers: whatever the rule says, rewards are 1.0 or 0.1 for well-formed text.
    free = reward(responses, [r["Ground-True Answer"] for r in rows])
    assert set(free.rewards) <= {1.0, 0.1} and all(free.format_ok)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 responses but 1 references"):
        AnswerMatchReward()([GOOD, WRONG], [REF])


# ------------------------------------------------------------------------------------------------
# TRL adapter and config-driven construction


def test_trl_reward_func_answer_match():
    func, format_ok, correct, failed = trl_reward_funcs(AnswerMatchReward())
    assert (func.__name__, format_ok.__name__, correct.__name__) == (
        "answer_match_reward",
        "format_ok",
        "verifier_true",
    )
    assert failed.__name__ == "reward_failed"
    assert failed(prompts=["Q"], completions=[GOOD], reference=["metformin"]) == [0.0]
    assert list(inspect.signature(func).parameters)[:3] == ["prompts", "completions", "reference"]
    prompts = ["Q1", "Q2", "Q3"]
    refs = ["Metformin", "Metformin", "B"]
    texts = [GOOD, WRONG, NO_HEADERS]
    assert func(prompts=prompts, completions=texts, reference=refs, completion_ids=None) == [1.0, 0.1, 0.0]
    assert format_ok(prompts=prompts, completions=texts, reference=refs) == [1.0, 1.0, 0.0]
    assert correct(prompts=prompts, completions=texts, reference=refs) == [1.0, 0.0, 0.0]
    conversational = [[{"role": "assistant", "content": t}] for t in texts]
    chat_prompts = [[{"role": "user", "content": p}] for p in prompts]
    assert func(prompts=chat_prompts, completions=conversational, reference=refs, trainer_state=None) == [1.0, 0.1, 0.0]
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}]]
    assert func(prompts=["Q"], completions=parts, reference=["metformin"]) == [1.0]
    # Several messages: the last one is the completion that is scored.
    turns = [[{"role": "assistant", "content": NO_HEADERS}, {"role": "assistant", "content": GOOD}]]
    assert func(prompts=["Q"], completions=turns, reference=["metformin"]) == [1.0]


def test_trl_reward_func_verifier(verifier_yes):
    func = trl_reward_funcs(verifier_yes)[0]
    assert func.__name__ == "verifier_reward"
    out = func(
        prompts=["Q", "Q"],
        completions=[[{"role": "assistant", "content": WRONG}], [{"role": "assistant", "content": TWO_THINKINGS}]],
        reference=[REF, REF],
    )
    assert out == [1.0, 0.0] and all(isinstance(x, float) for x in out)


def test_build_reward_from_dicts(verifier_dirs):
    adapter = TypeAdapter(RewardConfig)
    verifier_cfg = adapter.validate_python({"kind": "verifier", "model": str(verifier_dirs["yes"]), "threshold": 0.5})
    assert isinstance(verifier_cfg, VerifierRewardConfig) and verifier_cfg.threshold == 0.5
    verifier = build_reward(verifier_cfg)
    assert isinstance(verifier, VerifierReward)
    assert verifier([GOOD], [REF]).rewards == [1.0]

    match_cfg = adapter.validate_python({"kind": "answer_match", "reward_wrong": 0.0})
    assert isinstance(match_cfg, AnswerMatchRewardConfig)
    match = build_reward(match_cfg)
    assert isinstance(match, AnswerMatchReward)
    assert match([GOOD, WRONG], [REF, REF]).rewards == [1.0, 0.0]

    with pytest.raises(ValidationError):
        adapter.validate_python({"kind": "bleu"})
    with pytest.raises(ValidationError):
        adapter.validate_python({"kind": "answer_match", "treshold": 0.5})  # typo: extra keys forbidden
    with pytest.raises(ValidationError):
        adapter.validate_python({"kind": "verifier"})  # the model path is required
