"""Keras legacy HDF5 weights -> tljax variables, orbax checkpoints of them, and the CLI."""

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile

from absl import flags
from absl import logging
import h5py
import jax
import jax.numpy as jnp
import numpy as np

from tljax import models
from tljax.runtime import cli

# Keras layer kind -> {Keras weight name: (collection, Flax name)}. Keras 2 files
# name depthwise kernels 'depthwise_kernel', Keras 3 names them 'kernel'.
_WEIGHT_MAP = {
    'Conv2D': {'kernel': ('params', 'kernel'), 'bias': ('params', 'bias')},
    'Dense': {'kernel': ('params', 'kernel'), 'bias': ('params', 'bias')},
    'DepthwiseConv2D': {'depthwise_kernel': ('params', 'kernel'), 'kernel': ('params', 'kernel'),
                        'bias': ('params', 'bias')},
    'BatchNormalization': {'gamma': ('params', 'scale'), 'beta': ('params', 'bias'),
                           'moving_mean': ('batch_stats', 'mean'),
                           'moving_variance': ('batch_stats', 'var')},
    'Normalization': {'mean': ('batch_stats', 'mean'), 'variance': ('batch_stats', 'variance'),
                      'count': ('batch_stats', 'count')},
}

_METADATA_FILE = 'tljax_convert.json'
_VARIABLES_DIR = 'variables'


class WeightsFileError(ValueError):
  """A weights file that cannot be read as a Keras HDF5 weights file."""


def _weight_name(full_name: str) -> str:
  """'block1a_dwconv/depthwise_kernel:0' -> 'depthwise_kernel'."""
  return re.sub(r':\d+$', '', full_name.rsplit('/', 1)[-1])


def _attr_list(obj, name):
  """Keras's load_attributes_from_hdf5_group: the attr, or its chunks name0, name1, ..."""
  if name in obj.attrs:
    chunks = [obj.attrs[name]]
  else:
    chunks, i = [], 0
    while f'{name}{i}' in obj.attrs:
      chunks.append(obj.attrs[f'{name}{i}'])
      i += 1
  return [n.decode('utf8') if hasattr(n, 'decode') else str(n) for c in chunks for n in c]


def read_keras_h5(path: str) -> dict[str, dict[str, np.ndarray]]:
  """{layer name: {weight name: array}} of the layers with weights, in file order."""
  try:
    with h5py.File(path, 'r') as f:
      root = f['model_weights'] if 'layer_names' not in f.attrs and 'model_weights' in f else f
      if 'layer_names' not in root.attrs:
        raise WeightsFileError(f'{path} is not a Keras HDF5 weights file (no layer_names attribute).')
      out = {}
      for layer in _attr_list(root, 'layer_names'):
        group = root[layer]
        weights = {}
        for full in _attr_list(group, 'weight_names'):
          name = _weight_name(full)
          if name in weights:
            raise WeightsFileError(f'{path}: layer {layer!r} has two weights named {name!r}.')
          weights[name] = np.asarray(group[full][()])
        if weights:
          out[layer] = weights
      return out
  except WeightsFileError:
    raise
  except (OSError, KeyError, RuntimeError, ValueError) as e:
    raise WeightsFileError(f'Cannot read Keras HDF5 weights file {path} (truncated or corrupt?): '
                           f'{type(e).__name__}: {e}') from e


def expected_variables(model_name: str, **fields):
  """The base model's variables as jax.ShapeDtypeStructs, and its weighted layers' kinds (in
  Keras order). fields: the model's fields (`alpha`, `minimalistic`: models.MODEL_FIELDS)."""
  model = models.create(model_name, num_classes=None, **fields)
  shape = (1, *models.default_input_shape(model_name))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
  kinds = {l.name: l.kind for l in model.keras_layers() if l.weighted and l.base}
  return {k: dict(v) for k, v in variables.items()}, kinds


def _file_layer_to_model(file_layers, kinds):
  """Map file layer names to model layer names: by name, where only Keras's auto-named
  'normalization_N' moves; by position (Keras's own rule for legacy HDF5 files) only when no
  file layer is named as a model layer and both have as many weighted layers."""
  if (file_layers and not set(file_layers) & set(kinds) and len(file_layers) == len(kinds)
      and 'normalization' not in kinds):
    logging.warning('No layer of the weights file is named as a layer of the model: its %d '
                    'weighted layers are matched by position, as Keras loads legacy HDF5 files.',
                    len(kinds))
    return dict(zip(file_layers, kinds))
  mapping = {}
  for name in file_layers:
    target = name
    if (name not in kinds and re.fullmatch(r'normalization_\d+', name)
        and 'normalization' in kinds and 'normalization' not in file_layers):
      target = 'normalization'
    mapping[name] = target
  return mapping


def describe(model_name: str, fields: dict) -> str:
  """'mobilenet_v2 (alpha=0.35)': a model and its non-default fields, for messages."""
  shown = ', '.join(f'{k}={v!r}' for k, v in sorted(fields.items())
                    if v != models.FIELD_DEFAULTS.get(k))
  return f'{model_name} ({shown})' if shown else model_name


def keras_h5_to_variables(path: str, model_name: str, **fields) -> dict:
  """{'params': ..., 'batch_stats': ...} (numpy float32) for the base of `model_name` with the
  model fields `fields` (alpha=0.35, minimalistic=True: models.MODEL_FIELDS).

  Strict: a weight of the file the model lacks, a model variable the file
  lacks, or a shape mismatch raises ValueError naming the layer and weight.
  """
  file_weights = read_keras_h5(path)
  expected, kinds = expected_variables(model_name, **fields)
  model_name = describe(model_name, fields)  # in the messages
  out = {col: {} for col in expected}
  for file_layer, layer in _file_layer_to_model(file_weights, kinds).items():
    if layer not in kinds:
      raise ValueError(f'{path}: layer {file_layer!r} has weights '
                       f'({", ".join(file_weights[file_layer])}) but {model_name} has no such layer.')
    table = _WEIGHT_MAP[kinds[layer]]
    for wname, value in file_weights[file_layer].items():
      if wname not in table:
        raise ValueError(f'{path}: weight {file_layer}/{wname} has no counterpart in {model_name} '
                         f'layer {layer!r} ({kinds[layer]}).')
      col, fname = table[wname]
      want = expected.get(col, {}).get(layer, {}).get(fname)
      if want is None:
        raise ValueError(f'{path}: weight {file_layer}/{wname} has no counterpart in {model_name} '
                         f'({col}/{layer}/{fname} does not exist).')
      if kinds[layer] == 'DepthwiseConv2D' and fname == 'kernel' and value.ndim == 4:
        value = value.transpose(0, 1, 3, 2)  # Keras (kh, kw, C, 1) -> Flax (kh, kw, 1, C)
      if tuple(value.shape) != tuple(want.shape):
        raise ValueError(f'{path}: shape mismatch for {file_layer}/{wname}: file has '
                         f'{tuple(value.shape)}, {model_name} {col}/{layer}/{fname} needs '
                         f'{tuple(want.shape)}.')
      dest = out[col].setdefault(layer, {})
      if fname in dest:
        raise ValueError(f'{path}: layer {file_layer!r} sets {col}/{layer}/{fname} twice.')
      dest[fname] = np.asarray(value, dtype=want.dtype)
  missing = [f'{col}/{layer}/{fname} {tuple(s.shape)}'
             for col, layers in expected.items() for layer, vs in layers.items()
             for fname, s in vs.items() if fname not in out[col].get(layer, {})]
  if missing:
    shown = ', '.join(missing[:10]) + (f' ... ({len(missing)} in all)' if len(missing) > 10 else '')
    raise ValueError(f'{path} lacks weights that {model_name} needs: {shown}.')
  return out


def file_md5(path: str) -> str:
  h = hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def save_converted(variables: dict, out_dir: str, metadata: dict | None = None,
                   overwrite: bool = False) -> str:
  """Write `variables` as an orbax checkpoint in `out_dir`, atomically (temp dir + rename)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  if os.path.exists(out_dir) and not overwrite:
    raise FileExistsError(f'{out_dir} exists; pass overwrite=True (--overwrite) to replace it.')
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(out_dir)}.tmp-', dir=parent)
  try:
    tree = jax.tree.map(np.asarray, variables)
    ocp.PyTreeCheckpointer().save(os.path.join(tmp, _VARIABLES_DIR), tree)
    with open(os.path.join(tmp, _METADATA_FILE), 'w') as f:
      json.dump(metadata or {}, f, indent=1, sort_keys=True)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    if os.path.exists(out_dir):
      old = tempfile.mkdtemp(prefix=f'.{os.path.basename(out_dir)}.old-', dir=parent)
      os.rename(out_dir, os.path.join(old, 'x'))
      os.rename(tmp, out_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def converted_metadata(ckpt_dir: str) -> dict:
  with open(os.path.join(ckpt_dir, _METADATA_FILE)) as f:
    return json.load(f)


def load_converted(ckpt_dir: str, model_name: str | None = None, **fields) -> dict:
  """The variables saved by `save_converted` (numpy); checks the model name if given, and the
  model fields given against those recorded."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckpt_dir = os.path.abspath(os.path.expanduser(ckpt_dir))
  path = os.path.join(ckpt_dir, _VARIABLES_DIR)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{ckpt_dir} is not a tljax converted checkpoint (no {_VARIABLES_DIR}/).')
  if model_name is not None:
    saved = converted_metadata(ckpt_dir).get('model')
    if saved != model_name:
      raise ValueError(f'{ckpt_dir} holds weights for {saved!r}, not {model_name!r}.')
    recorded = converted_metadata(ckpt_dir).get('fields', {})
    for k, v in fields.items():
      if recorded.get(k, models.FIELD_DEFAULTS.get(k)) != v:
        raise ValueError(f'{ckpt_dir} holds weights for {model_name} with {k}='
                         f'{recorded.get(k, models.FIELD_DEFAULTS.get(k))!r}, not {v!r}.')
  return ocp.PyTreeCheckpointer().restore(path)


def convert(keras_h5: str, model_name: str, out_dir: str, overwrite: bool = False,
            **fields) -> str:
  """Read, check and save: the whole of the command line."""
  variables = keras_h5_to_variables(keras_h5, model_name, **fields)
  meta = {'model': model_name, 'source': os.path.abspath(keras_h5),
          'source_md5': file_md5(keras_h5), 'fields': fields}
  return save_converted(variables, out_dir, meta, overwrite)


def _flag_values() -> flags.FlagValues:
  """Private flags, so importing this module defines no global --model."""
  fv = flags.FlagValues()
  flags.DEFINE_string('model', None, 'tljax model name, e.g. efficientnet_b0.', flag_values=fv)
  flags.DEFINE_string('keras_h5', None, 'Keras HDF5 weights file (e.g. efficientnetb0_notop.h5).',
                      flag_values=fv)
  flags.DEFINE_string('out', None, 'Directory to write the orbax checkpoint to.', flag_values=fv)
  flags.DEFINE_bool('overwrite', False, 'Replace --out if it exists.', flag_values=fv)
  flags.DEFINE_float('alpha', None, 'Width multiplier of the MobileNets (Keras alpha; 1.0).',
                     flag_values=fv)
  flags.DEFINE_bool('minimalistic', None, 'MobileNetV3 without squeeze-excite and hard-swish.',
                    flag_values=fv)
  for name in ('model', 'keras_h5', 'out'):
    flags.mark_flag_as_required(name, flag_values=fv)
  return fv


USAGE = ('python -m tljax.convert --model=NAME --keras_h5=PATH --out=DIR [--alpha=A] '
         '[--minimalistic] [--overwrite]')
ABOUT = ("Converts Keras's legacy HDF5 weights of an EfficientNet, MobileNetV2/V3 or ResNet50 "
         '(as keras.applications downloads them, Keras 2 or 3 names) into an orbax checkpoint of '
         'tljax variables; a weight the model lacks, a missing layer or a shape mismatch is an '
         'error naming the layer. A run converts the ImageNet weights itself; this is for a file '
         'you already have.')
EXAMPLES = ('python -m tljax.convert --model=efficientnet_b0 '
            '--keras_h5=efficientnetb0_notop.h5 --out=artifacts/cache/efficientnet_b0_imagenet',
            'python -m tljax.convert --model=mobilenet_v2 --alpha=0.35 --keras_h5=FILE.h5 '
            '--out=DIR')


def main(argv):
  """`python -m tljax.convert --model=efficientnet_b0 --keras_h5=PATH --out=DIR` (MobileNets:
  --alpha=0.35, MobileNetV3: --minimalistic): the output directory (None after --help)."""
  fv = _flag_values()
  if cli.asks_help(argv):
    print(cli.help_text(USAGE, ABOUT, fv, EXAMPLES))
    return None
  try:
    fv(argv)
  except flags.Error as e:
    raise SystemExit(f'{e}\nUsage: {USAGE} (--help says more)')
  try:
    fields = {k: fv[k].value for k in models.FIELD_DEFAULTS if fv[k].value is not None}
    out = convert(fv.keras_h5, fv.model, fv.out, fv.overwrite, **fields)
  except (ValueError, OSError) as e:  # bad file, mismatched model, existing --out
    raise SystemExit(f'tljax.convert: {e}') from e
  print(f'Wrote {fv.model} variables from {fv.keras_h5} to {out}')
  return out


if __name__ == '__main__':
  main(sys.argv)
