"""The Keras 3 (TensorFlow backend) peers: the small CNN and keras.applications bases
(EfficientNetB0, MobileNetV2, ResNet50), timed train steps, the whole sweep."""

import os
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


# tljax model -> the keras.applications builder of its base.
APPLICATIONS = {'efficientnet_b0': 'EfficientNetB0', 'mobilenet_v2': 'MobileNetV2',
                'mobilenet_v3_small': 'MobileNetV3Small', 'mobilenet_v3_large': 'MobileNetV3Large',
                'resnet50': 'ResNet50'}


def b0(keras, num_classes, size, model='efficientnet_b0', **fields):
  """keras.applications's base of tljax `model` (random weights; fields: alpha, minimalistic)
  + the tljax head; (model, base)."""
  layers = keras.layers
  base = getattr(keras.applications, APPLICATIONS[model])(
      weights=None, include_top=False, input_shape=(size, size, 3), **fields)
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
      model, base = b0(keras, spec['num_classes'], spec['image_size'], spec['model'],
                       **spec.get('fields', {}))
      base_layers = [l for l in base.layers if not isinstance(l, keras.layers.InputLayer)]
      keep = {'head': 0, 'top': spec.get('top', top_layers), 'all': len(base_layers)}[kind]
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


# --- The whole sweep, as a user's Keras script -----------------------------------------------


def sweep(job, data, log=print):
  """The small-CNN sweep in Keras 3 on TensorFlow: pretraining on the source (every layer), then
  per case the pretrained weights with a new head, the frozen layers `trainable=False`,
  `model.fit` with a checkpoint per epoch (ModelCheckpoint), `model.evaluate`.

  job: benchmarks.sweep's job. data: {(role, split): (uint8 NHWC images, int labels)}.
  Returns the phases' wall seconds and test accuracies.
  """
  t0 = time.perf_counter()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count())
  import keras  # pylint: disable=g-import-not-at-top
  imports_s = time.perf_counter() - t0
  _check_backend(keras)
  t1 = time.perf_counter()
  arrays = {k: ((x.astype(np.float32) / np.float32(255.0)), y.astype(np.int32))
            for k, (x, y) in data.items()}
  load_s = time.perf_counter() - t1
  classes = {role: job['data_info']['roles'][role]['classes'] for role in ('source', 'target')}
  keras.utils.set_random_seed(job['seed'])
  ckpt_dir = os.path.join(job['workdir'], 'checkpoints')
  os.makedirs(ckpt_dir, exist_ok=True)

  class Progress(keras.callbacks.Callback):
    """One progress line per epoch."""

    def __init__(self, name, n):
      super().__init__()
      self.name, self.n = name, n

    def on_epoch_begin(self, epoch, logs=None):
      self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      log(f'{self.name} epoch {epoch + 1}: loss {logs["loss"]:.4f}, '
          f'{self.n / (time.perf_counter() - self.t):.0f} ex/s')

  def fit_evaluate(model, role, epochs, name):
    model.compile(optimizer=keras.optimizers.Adam(job['learning_rate']),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=['accuracy'])
    x, y = arrays[(role, 'train')]
    model.fit(x, y, batch_size=job['batch_size'], epochs=epochs, shuffle=True, verbose=0,
              callbacks=[keras.callbacks.ModelCheckpoint(
                  os.path.join(ckpt_dir, name + '.weights.h5'), save_weights_only=True),
                         Progress(name, len(y))])
    xt, yt = arrays[(role, 'test')]
    _, acc = model.evaluate(xt, yt, batch_size=job['eval_batch_size'], verbose=0)
    steps = epochs * -(-len(y) // job['batch_size'])  # fit keeps the last partial batch
    return float(acc), steps

  phases = {}
  t_sweep = time.perf_counter()
  log('pretraining')
  tp = time.perf_counter()
  model = small_cnn(keras, classes['source'])
  acc, steps = fit_evaluate(model, 'source', job['pretrain_epochs'], 'pretrain')
  pretrained = [layer.get_weights() for layer in model.layers]
  model.save_weights(os.path.join(ckpt_dir, 'pretrained.weights.h5'))
  phases['pretraining'] = dict(wall_s=time.perf_counter() - tp, test_accuracy=acc, steps=steps)
  log(f'pretraining: {phases["pretraining"]["wall_s"]:.1f} s, source test accuracy {acc:.4f}')
  for n in job['cases']:
    tc = time.perf_counter()
    keras.backend.clear_session()
    model = small_cnn(keras, classes['target'])
    for layer, weights in zip(model.layers[:-1], pretrained[:-1]):  # a new classifier
      layer.set_weights(weights)
    for layer in model.layers[:len(model.layers) - n]:
      layer.trainable = False
    acc, steps = fit_evaluate(model, 'target', job['epochs'], f'case_{n}')
    phases[f'case {n}'] = dict(wall_s=time.perf_counter() - tc, test_accuracy=acc, steps=steps)
    log(f'case {n}: {phases[f"case {n}"]["wall_s"]:.1f} s, test accuracy {acc:.4f}')
  sweep_s = time.perf_counter() - t_sweep
  return dict(framework='keras', versions={'keras': keras.__version__, 'tensorflow': tf.__version__},
              threads=os.cpu_count(), imports_s=imports_s, data_load_s=load_s, phases=phases,
              other_s=sweep_s - sum(p['wall_s'] for p in phases.values()), sweep_s=sweep_s,
              note='model.fit on arrays in memory (shuffle=True), compile() defaults; frozen '
                   'layers trainable=False (frozen Dropout still drops, as Keras runs it); '
                   'a checkpoint per epoch')
