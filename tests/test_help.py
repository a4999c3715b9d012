"""Every command answers --help (usage, flags, an example; exit 0) and a run's console shows no
third-party C++ log lines."""

import os
import re
import subprocess
import sys

import pytest

from tljax.config import checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What TensorFlow's C++ logging writes: 'I0000 00:00:...', 'E0000 ...', absl's preamble.
CPP_LOG_LINE = re.compile(r'^[IWEF]\d{4} |absl::InitializeLog|oneDNN', re.M)


def _env(**extra):
  """This environment without TensorFlow's logging settings (a new user's shell)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS')}
  return dict(env, **extra)


def _run(*args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=300)


def _flat(text):
  return ' '.join(text.split())


def test_launch_help_lists_every_config_field_with_its_value_and_description():
  out = _run('launch.py', '--config=configs/test2.py', '--help')
  assert out.returncode == 0, out.stderr[-2000:]
  text = _flat(out.stdout)
  assert text.startswith('Usage: python launch.py'), out.stdout[:300]
  assert '--workdir=DIR' in text and 'Examples:' in text
  for name, spec in checks.FIELDS.items():
    assert f'--config.{name}=' in text, name
    assert _flat(spec.doc) in text, name
  # The given config's values, and the default where it differs.
  assert "--config.model='efficientnet_b0' (configs/base.py: 'small_cnn')" in text
  assert '--config.seeds=(0,)' in text


@pytest.mark.parametrize('module, flags', [
    ('tljax.recommend', ('--workdir', '--max_energy_per_example_j', '--max_train_memory_mb',
                         '--min_accuracy', '--memory', '--energy', '--[no]include_incomplete')),
    ('tljax.status', ('--workdir',)),
    ('tljax.convert', ('--model', '--keras_h5', '--out', '--[no]overwrite')),
    ('tljax.config.docs', ()),
])
def test_each_entry_point_answers_help(module, flags):
  out = _run('-m', module, '--help')
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith(f'Usage: python -m {module} '), out.stdout[:300]
  for flag in flags:
    assert f'\n  {flag}\n' in out.stdout, flag
  example = out.stdout.split('\nExample')[1]
  assert f'python -m {module} ' in example
  assert 'Unknown command line flag' not in out.stdout + out.stderr


def test_tensorflow_loads_and_decodes_without_cpp_log_lines():
  """The input pipeline's first use (the gate every TensorFlow import goes through) keeps
  TensorFlow's C++ lines off the console: oneDNN's custom operations off, INFO and WARNING
  lines filtered. A value the user set wins."""
  code = ('import os; from tljax.data import prepare; tf = prepare.tensorflow(); '
          'x = tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)); '
          'ds = tf.data.Dataset.from_tensor_slices([x, x]).map(lambda p: tf.image.resize('
          'tf.cast(tf.io.decode_image(p, channels=3, expand_animations=False), tf.float32), '
          '(4, 4), antialias=True)); '
          'n = len(list(ds.as_numpy_iterator())); '
          "print(n, os.environ['TF_ENABLE_ONEDNN_OPTS'], os.environ['TF_CPP_MIN_LOG_LEVEL'])")
  out = _run('-c', code)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ['2', '0', '2']
  assert not CPP_LOG_LINE.search(out.stderr), out.stderr[:1000]
  mine = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        env=_env(TF_CPP_MIN_LOG_LEVEL='3'), timeout=300)
  assert mine.stdout.split() == ['2', '0', '3']
