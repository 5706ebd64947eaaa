"""The base trainer config of the CPU sweep demos: a 2-layer, 64-wide byte LLaMA.

Constant learning rate without warmup or weight decay (the setting of Li et al.
2026, Sec. 4), logs every 5 steps, evaluates only at the end, one checkpoint
every 50 steps. Not a sweep itself: the demo sweeps take it as their base.
"""

from signflax.experiments.sweep import base_config


def get_config():
  config = base_config("lm/tiny.py")
  config.model.update(dict(num_layers=2, d_model=64, num_heads=2, max_seq_len=64))
  config.optimizer.update(dict(name="sign_sgd", learning_rate=1e-3, schedule="constant",
                               warmup_steps=0, weight_decay=0.0))
  config.train.update(dict(steps=200, global_batch_size=8, seq_len=64, log_every=5,
                           eval_every=0, eval_batches=4, noise_stats=False))
  config.checkpoint.update(dict(every_steps=50, keep=1, async_save=False))
  return config
