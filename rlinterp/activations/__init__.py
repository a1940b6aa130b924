"""Tokens and activations: prompt sets, the streamed on-disk activation store every model of
a series is harvested into, and on-policy tokens that each checkpoint writes itself."""
