"""Rewards for the RL stage: the published format rule plus a verifier model or a rule-based match.

Per response, as published for HuatuoGPT-o1:

1. Format (`medo1.data.final_response`, the parser the eval uses too): the text must contain `## Thinking` exactly
   once and `## Final Response\\n\\n` exactly once; otherwise it gets `reward_bad_format` (0.0) and is not
   scored further.
2. The answer is the text after `## Final Response`, stripped (an empty answer is still scored).
3. `verifier.VerifierReward`: a 2-class sequence classifier with its own tokenizer reads a prompt holding
   the answer and the reference; P("True") > threshold (0.4) gives `reward_correct` (1.0),
   otherwise `reward_wrong` (0.1).
   `answer_match.AnswerMatchReward`: the same reward values from a match of one extracted final answer, for
   teams without a verifier checkpoint. `judge.JudgeReward` (`reward.kind: judge`): the
   same values from a generative judge behind an OpenAI-compatible endpoint.

Every reward object is called as `reward(responses, references) -> RewardOutput`, so PPO, GRPO
and RLOO can use any (`base`); `factory.build_reward` makes one from its recipe section (`config`) and
`factory.trl_reward_funcs` adapts one to TRL's reward-function signature.
"""
