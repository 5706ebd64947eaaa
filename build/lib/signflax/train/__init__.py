"""Training: train state, the sharded jitted step, metrics, Orbax checkpoints
(``checkpoint``), SIGTERM/NaN stops (``preemption``) and the loop (``trainer``)."""
