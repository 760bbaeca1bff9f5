"""Supervised fine-tuning on chain-of-thought data: its recipe section (config) and the run (trainer)."""
