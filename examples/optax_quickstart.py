"""signflax.optim inside plain JAX + Optax: train a small MLP with each optimizer.

    python examples/optax_quickstart.py [--steps 300]

A two-layer MLP regresses a random teacher network. Each optimizer is an ordinary
``optax.GradientTransformation``, chained with gradient clipping and a WSD schedule.
Prints the loss at a few steps and the final loss for each.
"""

import argparse

import jax
import jax.numpy as jnp
import optax

import signflax.optim as sfo


def init_mlp(key, sizes):
  keys = jax.random.split(key, len(sizes) - 1)
  return {f"layer{i}": {"kernel": jax.random.normal(k, (m, n)) / jnp.sqrt(m)}
          for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}


def mlp(params, x):
  *hidden, last = params.values()
  for layer in hidden:
    x = jax.nn.gelu(x @ layer["kernel"])
  return x @ last["kernel"]


def make_optimizers(steps):
  wsd = lambda peak: sfo.wsd_schedule(peak, steps, warmup_steps=steps // 20)
  # The output layer has no hidden-matrix role: route only layer0/layer1 to Muon.
  hidden = lambda path, leaf: "layer2" not in jax.tree_util.keystr(path)
  return {
      "sgd": optax.sgd(wsd(0.05)),
      "adamw": optax.adamw(wsd(3e-3), weight_decay=0.0),
      "sign_sgd": sfo.sign_sgd(wsd(1e-3)),
      "signum": sfo.signum(wsd(3e-3), beta=0.9),
      "muon": sfo.muon(wsd(0.02), muon_params=hidden, fallback="adamw",
                       fallback_learning_rate=wsd(3e-3), ns_dtype=jnp.float32),
  }


def train(tx, steps, seed=0, batch=256, sizes=(32, 128, 128, 8)):
  k_teacher, k_student, k_data = jax.random.split(jax.random.key(seed), 3)
  teacher, params = init_mlp(k_teacher, sizes), init_mlp(k_student, sizes)
  tx = optax.chain(optax.clip_by_global_norm(1.0), tx)

  def loss_fn(params, x):
    return jnp.mean(jnp.square(mlp(params, x) - mlp(teacher, x)))

  @jax.jit
  def step(params, opt_state, key):
    x = jax.random.normal(key, (batch, sizes[0]))
    loss, grads = jax.value_and_grad(loss_fn)(params, x)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = tx.init(params), []
  for key in jax.random.split(k_data, steps):
    params, opt_state, loss = step(params, opt_state, key)
    losses.append(float(loss))
  return losses


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args(argv)
  marks = sorted({0, args.steps // 4, args.steps // 2, args.steps - 1})
  print(f"{'optimizer':<10}" + "".join(f"{'step ' + str(m):>12}" for m in marks))
  results = {}
  for name, tx in make_optimizers(args.steps).items():
    losses = train(tx, args.steps)
    results[name] = losses
    print(f"{name:<10}" + "".join(f"{losses[m]:>12.4f}" for m in marks))
  return results


if __name__ == "__main__":
  main()
