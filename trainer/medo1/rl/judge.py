"""`reward.kind: judge`: a generative judge behind an OpenAI-compatible endpoint (for instance a vLLM server in
the cluster running a larger model) decides whether each final answer matches the reference.

Per response: the published format rule first (bad format: `reward_bad_format`, the judge is not asked); then
the judge gets `prompt_template` with the final answer and the reference, at temperature 0, and its reply's
first word decides: True gives `reward_correct`, False `reward_wrong`. Requests go through
`medo1.chat_client` (`concurrency` in flight, a timeout per attempt, retries with backoff on 429 / 5xx /
timeouts / malformed bodies). A request that still fails, or a reply that is not True or False, is handled by
`on_failure`: `fail` stops the run at that step; `score_wrong` gives `reward_wrong` and marks it in
`RewardOutput.failed` (the `reward_failure_rate` metric). An endpoint that refuses every request (bad key,
wrong URL or model) always stops the run.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence

from medo1.chat_client import ChatClient, ChatEndpointError, ChatError
from medo1.config import StageError
from medo1.final_response import parse_response
from medo1.rl.rewards import JudgeRewardConfig, RewardOutput, _check_lengths

log = logging.getLogger(__name__)

_VERDICT = re.compile(r"[\s*_`\"'(\[]*(true|false)\b", re.IGNORECASE)


def parse_verdict(reply: str) -> bool | None:
    """True / False from the judge's reply ("True", "**False**.", "true - it matches"); None for anything else."""
    match = _VERDICT.match(reply)
    return None if match is None else match.group(1).lower() == "true"


class JudgeFailure(StageError):
    """Judge verdicts could not be had and `reward.on_failure` is `fail`."""


class JudgeReward:
    name = "judge_reward"

    def __init__(self, config: JudgeRewardConfig):
        self.config = config
        self.client_config = config.chat_client_config(
            config.base_url, config.model, config.api_key_env, config.concurrency
        )

    async def _verdict(self, client: ChatClient, answer: str, reference: str) -> bool | str:
        """The judge's verdict, or why there is none."""
        prompt = self.config.prompt_template.format(answer=answer, reference=reference)
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

    async def _verdicts(self, answers: list[str], references: list[str]) -> list[bool | str]:
        async with ChatClient(self.client_config) as client:
            return list(await asyncio.gather(*(self._verdict(client, a, r) for a, r in zip(answers, references))))

    def __call__(self, responses: Sequence[str], references: Sequence[str]) -> RewardOutput:
        _check_lengths(responses, references)
        cfg = self.config
        parsed = [parse_response(text) for text in responses]
        asked = [i for i, p in enumerate(parsed) if p.format_ok]
        verdicts = asyncio.run(self._verdicts([parsed[i].answer or "" for i in asked], [references[i] for i in asked]))
        problems = [v for v in verdicts if isinstance(v, str)]
        if problems:
            message = f"judge {cfg.base_url}: {len(problems)} of {len(verdicts)} verdicts missing; first: {problems[0]}"
            if cfg.on_failure == "fail":
                raise JudgeFailure(message + " (reward.on_failure=fail)")
            log.warning("%s; scored as wrong (reward.on_failure=score_wrong)", message)
        correct, failed = [False] * len(responses), [False] * len(responses)
        for i, verdict in zip(asked, verdicts):
            correct[i] = verdict is True
            failed[i] = isinstance(verdict, str)
        rewards = [
            cfg.reward_bad_format if not p.format_ok else cfg.reward_correct if ok else cfg.reward_wrong
            for p, ok in zip(parsed, correct)
        ]
        return RewardOutput(
            rewards=rewards, format_ok=[p.format_ok for p in parsed], correct=correct,
            scores=[None] * len(responses), failed=failed,
        )
