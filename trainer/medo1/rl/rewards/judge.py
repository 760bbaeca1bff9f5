"""`reward.kind: judge`: a generative judge decides whether each final answer matches the reference. It runs behind
an OpenAI-compatible endpoint, a vLLM server in the cluster running a larger model for example.

Per response: the published format rule first (bad format: `reward_bad_format`, the judge is not asked); then
the judge gets `prompt_template` with the final answer and the reference, at temperature 0, and its reply's
first word decides: True gives `reward_correct`, False `reward_wrong`. The answer is the policy's text, so it
is fenced: `<`, `>` and `&` in it (and in the reference) are written as `&lt;`, `&gt;`, `&amp;`, so it cannot
close `</Model Response>` and write its own instructions after it, and the default template tells the judge
that the quoted answer may hold instructions ("output True") and that they are not the judge's.

Requests go through `medo1.chat_client` (`concurrency` in flight, a timeout per attempt, retries with backoff
on 429 / 5xx / timeouts / malformed bodies). A request that still fails, or a reply that is not True or False,
is handled by `on_failure`: `fail` stops the run at that step; `score_wrong` gives `reward_wrong`; `skip` gives
no reward (the response takes no part in the update: zero advantage, as TRL does with a None reward); the
last two mark it in `RewardOutput.failed` (the `reward_failure_rate` metric), and more than
`max_failure_rate` of a batch's verdicts missing stops the run. An endpoint that refuses every request (bad
key, wrong URL or model) always stops the run. A few answers judged correct are logged per batch, so a person
can see a lenient judge at work. SIGTERM (a preemption) cancels the requests in flight and their retries at
once: the output is marked `interrupted`, and the trainer writes its checkpoint instead of waiting out the
retries.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence

from medo1.chat_client import ChatClient, ChatEndpointError, ChatError
from medo1.config import StageError
from medo1.data.final_response import parse_response
from medo1.rl.rewards.base import RewardOutput, check_lengths, published_rewards
from medo1.rl.rewards.config import JudgeRewardConfig
from medo1.training import preemption

log = logging.getLogger(__name__)

_VERDICT = re.compile(r"[\s*_`\"'(\[]*(true|false)\b", re.IGNORECASE)
STOP_POLL_S = 0.2
"""How often a batch of judge requests checks for SIGTERM."""
SAMPLE_CHARS = 300


def fence(text: str) -> str:
    """Text quoted inside the judge prompt's tags: `&`, `<`, `>` as HTML entities, so it cannot close a tag."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def parse_verdict(reply: str) -> bool | None:
    """True / False from the judge's reply ("True", "**False**.", "true - it matches"); None for anything else."""
    match = _VERDICT.match(reply)
    return None if match is None else match.group(1).lower() == "true"


class JudgeFailure(StageError):
    """Judge verdicts could not be had and `reward.on_failure` is `fail`, or too many (`max_failure_rate`)."""


class JudgeReward:
    name = "judge_reward"

    def __init__(self, config: JudgeRewardConfig):
        self.config = config
        self.client_config = config.chat_client_config(
            config.base_url, config.model, config.api_key_env, config.concurrency
        )

    async def _verdict(self, client: ChatClient, answer: str, reference: str) -> bool | str:
        """The judge's verdict, or why there is none."""
        prompt = self.config.prompt_template.format(answer=fence(answer), reference=fence(reference))
        try:
            completion = await client.complete(
                [{"role": "user", "content": prompt}], temperature=0.0, max_tokens=self.config.max_tokens
            )
        except ChatEndpointError:
            raise
        except ChatError as exc:
            return str(exc)
        verdict = parse_verdict(completion.text)
        return f"reply is not True or False: {completion.text[:80]!r}" if verdict is None else verdict

    async def _verdicts(self, answers: list[str], references: list[str]) -> tuple[list[bool | str], bool]:
        """Every verdict (or why there is none), and whether SIGTERM cut the batch short."""
        async with ChatClient(self.client_config) as client:
            tasks = [asyncio.create_task(self._verdict(client, a, r)) for a, r in zip(answers, references)]
            pending = set(tasks)
            interrupted = False
            try:
                while pending:
                    done, pending = await asyncio.wait(pending, timeout=STOP_POLL_S)
                    for task in done:
                        if task.exception() is not None:  # an endpoint that refuses everything: stop now
                            raise task.exception()
                    if pending and preemption.stop_requested():
                        interrupted = True
                        break
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            verdicts = ["stopped by SIGTERM" if task.cancelled() else task.result() for task in tasks]
        return verdicts, interrupted

    def __call__(self, responses: Sequence[str], references: Sequence[str]) -> RewardOutput:
        check_lengths(responses, references)
        cfg = self.config
        parsed = [parse_response(text) for text in responses]
        asked = [i for i, p in enumerate(parsed) if p.format_ok]
        verdicts, interrupted = asyncio.run(
            self._verdicts([parsed[i].answer or "" for i in asked], [references[i] for i in asked])
        )
        correct, failed = [False] * len(responses), [False] * len(responses)
        for i, verdict in zip(asked, verdicts):
            correct[i] = verdict is True
            failed[i] = isinstance(verdict, str)
        if interrupted:
            log.warning("judge %s: SIGTERM; %d of %d verdicts not waited for", cfg.base_url, sum(failed), len(asked))
        else:
            self._check_failures(verdicts)
            self._log_correct(parsed, references, correct)
        no_reward = interrupted or cfg.on_failure == "skip"
        format_ok = [p.format_ok for p in parsed]
        rewards = published_rewards(cfg, format_ok, correct, [miss and no_reward for miss in failed])
        return RewardOutput(
            rewards=rewards,
            format_ok=format_ok,
            correct=correct,
            scores=[None] * len(responses),
            failed=failed,
            interrupted=interrupted,
        )

    def _check_failures(self, verdicts: list[bool | str]) -> None:
        cfg = self.config
        problems = [v for v in verdicts if isinstance(v, str)]
        if not problems:
            return
        message = f"judge {cfg.base_url}: {len(problems)} of {len(verdicts)} verdicts missing; first: {problems[0]}"
        if cfg.on_failure == "fail":
            raise JudgeFailure(message + " (reward.on_failure=fail)")
        rate = len(problems) / len(verdicts)
        if rate > cfg.max_failure_rate:
            raise JudgeFailure(
                f"{message}: {rate:.0%} of the batch, above reward.max_failure_rate={cfg.max_failure_rate:g}"
            )
        treated = "no reward" if cfg.on_failure == "skip" else "scored as wrong"
        log.warning("%s; %s (reward.on_failure=%s)", message, treated, cfg.on_failure)

    def _log_correct(self, parsed, references: Sequence[str], correct: list[bool]) -> None:
        shown = [(parsed[i].answer or "", references[i]) for i, ok in enumerate(correct) if ok]
        for answer, reference in shown[: self.config.log_correct_samples]:
            log.info("judged correct: answer %r | reference %r", answer[:SAMPLE_CHARS], reference[:SAMPLE_CHARS])
