"""The pure train and evaluation steps, and the train state they carry."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(state, images, labels, *, model, tx, trainable):
  """One optimiser step. `trainable` is a static tree of bools over params.

  Frozen parameters are passed through untouched (not `p + 0`), and nothing but
  the masked optimiser reads their gradients, so XLA removes their backward pass.
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    logits, new_vars = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_rng})
    loss = cross_entropy(logits, labels).mean()
    return loss, (logits, new_vars['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = jax.tree.map(lambda p, u, t: p + u if t else p, state.params, updates, trainable)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, {'loss': loss, 'accuracy': accuracy}


def eval_step(params, batch_stats, images, labels, mask, *, model):
  """Sums over the real (mask = 1) examples of a padded batch: loss, correct, count."""
  logits = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=False)
  loss = cross_entropy(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {'loss': jnp.sum(loss * mask), 'correct': jnp.sum(correct * mask),
          'count': jnp.sum(mask)}
