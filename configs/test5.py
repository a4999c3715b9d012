"""Thesis test 5: small CNN, SVHN -> MNIST; `configs/test5.py:reverse` for MNIST -> SVHN."""

from configs import base


def get_config(direction='forward'):
  c = base.get_config()
  if direction not in ('forward', 'reverse'):
    raise ValueError(f"configs/test5.py:{direction}: the direction is 'forward' or 'reverse'.")
  c.name = 'test5' if direction == 'forward' else 'test5_reverse'
  c.source_dataset, c.target_dataset = ('svhn_cropped', 'mnist') if direction == 'forward' else (
      'mnist', 'svhn_cropped')
  c.pretrain_epochs = 10
  c.epochs = 5
  return c
