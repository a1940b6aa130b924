"""Dictionaries on harvested activations: SAEs (through SAELens), crosscoders, diff-SAEs,
stage-wise fine-tuning, matching, evaluation and feature cards."""
