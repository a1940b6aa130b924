"""Models of a checkpoint series: checkpoint folders (full weights or LoRA adapters), their
checks from files alone, loading through TransformerLens, the validated ``ModelSeries`` and
the executor that runs per-checkpoint work."""
