"""Following every dictionary latent across RL steps: trajectories, lineage classes with
their evidence and controls, and the track report."""
