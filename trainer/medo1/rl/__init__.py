"""RL stage: rewards, PPO and GRPO on top of the SFT checkpoint."""

from __future__ import annotations


def run_rl(config, resume: str = "none"):
    """Run the configured algorithm; imports are deferred so `medo1 --help` stays fast."""
    if config.algo == "ppo":
        from medo1.rl.ppo import run_ppo

        return run_ppo(config, resume)
    from medo1.rl.grpo import run_grpo

    return run_grpo(config, resume)
