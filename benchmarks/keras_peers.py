"""The Keras 3 (TensorFlow backend) peers: the small CNN and EfficientNetB0, their timed train steps."""

import time

import numpy as np

from benchmarks import timing


def small_cnn(keras, num_classes):
  """The small CNN as a Sequential of the thesis's 23 layers."""
  layers = keras.layers
  stack = [keras.Input((32, 32, 1))]
  for f in (32, 64, 128):
    stack += [layers.Conv2D(f, 3, padding='same', activation='relu'), layers.BatchNormalization(),
              layers.Conv2D(f, 3, padding='same', activation='relu'), layers.BatchNormalization(),
              layers.MaxPooling2D(), layers.Dropout(0.25)]
  stack += [layers.Flatten(), layers.Dense(128, activation='relu'), layers.BatchNormalization(),
            layers.Dropout(0.5), layers.Dense(num_classes)]
  return keras.Sequential(stack)


def b0(keras, num_classes, size):
  """keras.applications.EfficientNetB0 (random weights) + the tljax head; (model, base)."""
  layers = keras.layers
  base = keras.applications.EfficientNetB0(weights=None, include_top=False,
                                           input_shape=(size, size, 3))
  x = layers.GlobalAveragePooling2D()(base.output)
  x = layers.Dense(128, activation='relu')(x)
  x = layers.BatchNormalization()(x)
  x = layers.Dropout(0.5)(x)
  x = layers.Dense(num_classes)(x)
  return keras.Model(base.input, x), base


def _check_backend(keras):
  if keras.backend.backend() != 'tensorflow':
    raise RuntimeError(f'Keras backend is {keras.backend.backend()!r}, not tensorflow.')


def step_peer(spec, cases, xn, yn, timing_args, wait_idle=0.0, top_layers=3):
  """The step benchmark's peer: each case's train_on_batch timed as timing.median_time does.

  cases: [(case, kind)], kind the case for the small CNN, 'head'/'top'/'all' for EfficientNet
  ('top' = the head and the last `top_layers` base layers). xn, yn: one batch.
  """
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  _check_backend(keras)
  x, y = tf.constant(xn), tf.constant(yn)
  out, jit = [], None
  for n, kind in cases:
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    if spec['model'] == 'small_cnn':
      model = small_cnn(keras, spec['num_classes'])
      for layer in model.layers[:len(model.layers) - n]:
        layer.trainable = False
    else:
      model, base = b0(keras, spec['num_classes'], spec['image_size'])
      base_layers = [l for l in base.layers if not isinstance(l, keras.layers.InputLayer)]
      keep = {'head': 0, 'top': top_layers, 'all': len(base_layers)}[kind]
      for layer in base_layers[:len(base_layers) - keep]:
        layer.trainable = False
    # compile()'s defaults, as model.fit uses them (jit_compile='auto' is off on a CPU).
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    first_s = time.perf_counter() - t0
    jit = bool(model.jit_compile)
    waited = timing.wait_for_idle(wait_idle, log=timing.stderr)
    with timing.CpuContention() as contention:
      step_s, samples = timing.median_time(lambda m=model: m.train_on_batch(x, y), **timing_args)
    out.append(dict(case=n, step_s=step_s, samples_s=samples,
                    examples_per_s=spec['batch_size'] / step_s, first_step_s=first_s,
                    trainable_params=int(sum(np.prod(w.shape) for w in model.trainable_weights)),
                    other_cpu_share=contention.result.get('other_cpu_share'),
                    waited_for_idle_s=waited))
  return dict(versions={'keras': keras.__version__, 'tensorflow': tf.__version__},
              jit_compile=jit, note=f'train_on_batch, compile() defaults (jit_compile={jit})',
              cases=out)
