"""Thesis test 1: small CNN, CIFAR-100 -> CIFAR-10; `configs/test1.py:reverse` for CIFAR-10 -> CIFAR-100."""

from configs import base


def get_config(direction='forward'):
  c = base.get_config()
  if direction not in ('forward', 'reverse'):
    raise ValueError(f"configs/test1.py:{direction}: the direction is 'forward' or 'reverse'.")
  c.name = 'test1' if direction == 'forward' else 'test1_reverse'
  c.source_dataset, c.target_dataset = ('cifar100', 'cifar10') if direction == 'forward' else (
      'cifar10', 'cifar100')
  c.pretrain_epochs = 20
  c.epochs = 10
  return c
