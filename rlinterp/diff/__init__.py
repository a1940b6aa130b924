"""What RL changed, per layer and step: weight, activation and output diffs of a series, and
the scripted diff with its report."""
