"""Thesis test 2: EfficientNetB0 with ImageNet weights -> CIFAR-100 at 224x224 (Table 3.1 cases)."""

from configs import base


def get_config():
  c = base.as_the_thesis_ran(base.get_config())
  c.name = 'test2'
  c.model = 'efficientnet_b0'
  c.image_size = 224
  c.channels = 3
  c.pretrained = 'imagenet'
  c.source_dataset = 'imagenet'
  c.target_dataset = 'cifar100'
  # Head + the last N base layers in Keras order (Table 3.1, left), 0 = head only.
  c.cases = (0, 3, 5, 8, 16, 20, 23, 31)
  c.case_counting = 'base'
  c.epochs = 5
  c.batch_size = 32
  c.eval_batch_size = 64
  return c
