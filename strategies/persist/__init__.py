"""What a run leaves behind: the run directory and atomic checkpoints."""
