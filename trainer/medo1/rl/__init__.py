"""RL stage: rewards, PPO, GRPO and RLOO on top of the SFT checkpoint."""

from __future__ import annotations


def run_rl(config, resume: str = "none"):
    """Run the configured algorithm; imports are deferred so `medo1 --help` stays fast."""
    if config.algo == "ppo":
        from medo1.rl.ppo import run_ppo

        result = run_ppo(config, resume)
    else:
        from medo1.rl.grpo import run_grpo

        result = run_grpo(config, resume)  # grpo and rloo, through TRL
    # Run report (medo1.training.run_report): report.html with the curves, for clusters without W&B; a failure only warns.
    from medo1.training.process import is_main_process
    from medo1.training.run_report import write_report_safely

    if is_main_process() and not result.already_finished:
        write_report_safely(result.output_dir)
    return result
