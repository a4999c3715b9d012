"""TensorFlow only feeds the input pipeline: importing tljax.data hides the GPUs from it.

On a machine without a GPU, `tf.config.get_visible_devices('GPU') == []` holds whatever the code
does (the old check in tests/test_folder_data.py), so this test records the call that hides them.
"""

import importlib.util
import os

import tensorflow as tf

DATA_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tljax',
                       'data.py')


def _import_a_fresh_copy(name):
  spec = importlib.util.spec_from_file_location(name, DATA_PY)  # not tljax.data itself
  spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_importing_tljax_data_hides_every_gpu_from_tensorflow(monkeypatch):
  calls = []
  monkeypatch.setattr(tf.config, 'set_visible_devices',
                      lambda devices, device_type=None: calls.append((list(devices), device_type)))
  _import_a_fresh_copy('_tf_hidden_probe')
  assert ([], 'GPU') in calls


def test_hiding_after_tensorflow_started_is_not_an_error(monkeypatch):
  def already_initialised(devices, device_type=None):
    raise RuntimeError('Visible devices cannot be modified after being initialized')
  monkeypatch.setattr(tf.config, 'set_visible_devices', already_initialised)
  _import_a_fresh_copy('_tf_hidden_probe_2')
