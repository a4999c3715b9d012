"""new_head: the source classifier is kept only for the same dataset with the same classes."""

import jax
import numpy as np
import pytest

from configs import base
from tljax.training import case as case_lib
from tljax.training import compiled


def _config(source, target, source_classes=(), target_classes=(), new_head='auto'):
  c = base.get_config()
  c.source_dataset, c.target_dataset = source, target
  c.source_classes, c.target_classes = source_classes, target_classes
  c.new_head = new_head
  return c


@pytest.fixture(scope='module')
def pretrained():
  """A 10-class 'source' model whose weights differ from every case's fresh initialisation."""
  c = base.get_config()
  model = compiled.model_for(c, 10)
  return jax.tree.map(np.asarray, compiled.init_variables(model, c, jax.random.key(123)))


def _classifier_kept(config, pretrained):
  case = case_lib.make_case(config, 4, num_classes=10, pretrained=pretrained)
  kept = np.array_equal(case.variables['params']['dense_1']['kernel'],
                        pretrained['params']['dense_1']['kernel'])
  # The rest of the network always comes from the source model.
  np.testing.assert_array_equal(case.variables['params']['dense']['kernel'],
                                pretrained['params']['dense']['kernel'])
  assert kept == ('dense_1' not in case.reinit)
  return kept


def test_auto_gives_a_new_classifier_to_another_10_class_dataset(pretrained):
  # MNIST -> CIFAR-10: 10 classes each, but digits are not objects (measured: MNIST's classifier
  # gave 0.547 test accuracy where a fresh one gave 0.595).
  assert not _classifier_kept(_config('mnist', 'cifar10'), pretrained)
  assert not _classifier_kept(_config('svhn_cropped', 'mnist'), pretrained)


def test_auto_keeps_the_classifier_for_the_same_dataset_and_classes(pretrained):
  assert _classifier_kept(_config('cifar10', 'cifar10'), pretrained)
  classes = tuple(range(10))
  assert _classifier_kept(_config('cifar100', 'cifar100', classes, classes), pretrained)
  # The same dataset with other classes (or the same in another order) is another task.
  other = tuple(range(10, 20))
  assert not _classifier_kept(_config('cifar100', 'cifar100', classes, other), pretrained)
  assert not _classifier_kept(_config('cifar100', 'cifar100', classes, classes[::-1]), pretrained)


def test_auto_gives_a_new_classifier_to_another_image_folder(pretrained):
  other = _config('image_folder', 'image_folder')
  other.source_data_dir, other.target_data_dir = '/data/a', '/data/b'
  assert not _classifier_kept(other, pretrained)
  other.target_data_dir = '/data/a'
  assert _classifier_kept(other, pretrained)


def test_always_and_never(pretrained):
  assert not _classifier_kept(_config('cifar10', 'cifar10', new_head='always'), pretrained)
  assert _classifier_kept(_config('mnist', 'cifar10', new_head='never'), pretrained)
  with pytest.raises(ValueError, match=r"config.new_head='never' keeps the source classifier"):
    case_lib.make_case(_config('cifar10', 'cifar100', new_head='never'), 4, num_classes=100,
                    pretrained=pretrained)
