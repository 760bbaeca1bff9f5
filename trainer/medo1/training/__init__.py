"""What every training stage shares: arguments, run folders and resume, checkpoints, preemption, metrics and the run report."""
