"""TensorFlow only feeds the input pipeline: imported on first use, with every GPU hidden from it.

On a machine without a GPU, `tf.config.get_visible_devices('GPU') == []` holds whatever the code
does, so these tests record the call that hides them.
"""

import subprocess
import sys

import tensorflow as tf

from tljax.data import prepare


def test_first_use_hides_every_gpu_from_tensorflow(monkeypatch):
  calls = []
  monkeypatch.setattr(tf.config, 'set_visible_devices',
                      lambda devices, device_type=None: calls.append((list(devices), device_type)))
  monkeypatch.setattr(prepare, '_TF', [])
  assert prepare.tensorflow() is tf and prepare.tensorflow() is tf
  assert calls == [([], 'GPU')]  # once


def test_hiding_after_tensorflow_started_is_not_an_error(monkeypatch):
  def already_initialised(devices, device_type=None):
    raise RuntimeError('Visible devices cannot be modified after being initialized')
  monkeypatch.setattr(tf.config, 'set_visible_devices', already_initialised)
  monkeypatch.setattr(prepare, '_TF', [])
  assert prepare.tensorflow() is tf


def test_a_run_on_arrays_imports_no_tensorflow():
  """The sweep, its launcher and the steps run without TensorFlow (a GPU image may lack it); nor
  do they import scikit-learn (1.3 s) before a proxy or the digits need it."""
  code = ('import sys, tljax.sweep.runner, tljax.cluster.launcher, tljax.training.case, '
          'tljax.training.pretrain; '
          'print(sorted(m for m in sys.modules if m.split(".")[0] in '
          '("tensorflow", "tensorflow_datasets", "keras", "sklearn")))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]', out.stdout[:300]
