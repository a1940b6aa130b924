"""Which components carry what RL changed: behaviour metrics, cross-model and attribution
patching, attention change, verdicts and the circuits report."""
