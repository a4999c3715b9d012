"""The data of a config: its splits loaded at the model's input, their identity, preprocessing."""

import functools

from tljax.data import datasets
from tljax import models


def prep_fn(config, dataset_name):
  """The per-batch preprocessing of `dataset_name` for the config's model: resized, scaled to
  its pixel range, then Keras's preprocess_input where the model's graph lacks it
  (models.PREPROCESS: MobileNetV2, ResNet50)."""
  prep = functools.partial(datasets.preprocess, image_size=config.image_size,
                           channels=config.channels, fit=datasets.fit_of(dataset_name),
                           pixel_scale=models.pixel_scale(config.model))
  if config.model not in models.PREPROCESS:
    return prep
  return functools.partial(_keras_prep, prep=prep, model=config.model)


def _keras_prep(images, *, prep, model):
  return models.preprocess_input(model, prep(images))


def model_input(config):
  return datasets.ModelInput(config.image_size, config.channels, config.cache_dir,
                         int(config.data_memory_mb * 2**20))


def load(config, role, split):
  """Split `split` of the source or target (`role`) dataset of `config`."""
  return datasets.load(config[f'{role}_dataset'], split, classes=tuple(config[f'{role}_classes']),
                   data_dir=config.data_dir or None, root=config[f'{role}_data_dir'] or None,
                   model_input=model_input(config), mock=config.dry_run,
                   mock_examples=max(datasets.MOCK_EXAMPLES, config.batch_size,
                                     config.eval_batch_size),
                   classes_field=f'config.{role}_classes')


def data_identity(config):
  """{'source': ..., 'target': ...}: what the run's data are (datasets.identity), checked on resume
  and recorded in the summary."""
  out = {}
  for role in ('source', 'target'):
    name, root = config[f'{role}_dataset'], config[f'{role}_data_dir']
    if role == 'source' and config.pretrained != 'source':
      continue
    if datasets.is_folder(name) and not root:
      raise ValueError(f'config.{role}_dataset={name!r} needs config.{role}_data_dir: the folder '
                       'holding train/<class>/<image> and test/<class>/<image>.')
    try:
      out[role] = datasets.identity(name, root=root or None, data_dir=config.data_dir or None,
                                mock=config.dry_run)
    except ValueError as e:
      raise ValueError(f'config.{role}_data_dir={root!r}: {e}') from e
  return out
