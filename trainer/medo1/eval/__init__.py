"""Evaluation: a model (or an endpoint) answers benchmark questions (run), scored as the paper did (published),
with intervals and paired comparisons (stats)."""
