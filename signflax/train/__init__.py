"""Training: train state, the sharded jitted step, metrics, and the loop (``trainer``)."""
