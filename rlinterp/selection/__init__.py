"""Selection of what the base computes versus new computation: persona directions and
latents, the index with its interval and transition, and causal checks."""
