"""The local OpenAI stand-in (pipelines/openai_standin.py) playing a judge for `reward.kind: judge`: it answers True
when the final answer, normalised, is the reference, False otherwise, and "I cannot tell" for an answer holding
"UNSURE"; every prompt it is sent is recorded, and `judge_latency_s` delays each answer."""

from __future__ import annotations

import re
import time

from medo1.rl.rewards.answer_match import normalize_answer
from pipelines.openai_standin import StandIn


class JudgeStandIn(StandIn):
    """The stand-in answering judge prompts (its multiple-choice mode's hook, with a judge's answers)."""

    def __init__(self, *, judge_latency_s: float = 0.0, **kwargs):
        super().__init__(mcq_answers={}, **kwargs)
        self.judge_latency_s = judge_latency_s
        self.prompts: list[str] = []

    def _answer_mcq(self, request):
        prompt = request["messages"][-1]["content"]
        with self.lock:
            self.prompts.append(prompt)
        time.sleep(self.judge_latency_s)
        answer = re.search(r"<Model Response>\n(.*)\n</Model Response>", prompt, re.S).group(1)
        reference = re.search(r"<Reference Answer>\n(.*)\n</Reference Answer>", prompt, re.S).group(1)
        if "UNSURE" in answer:
            verdict = "I cannot tell."
        else:
            verdict = "True" if normalize_answer(answer) == normalize_answer(reference) else "False"
        return 200, {}, self._completion(request, verdict)
