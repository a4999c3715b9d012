"""Thesis test 5: small CNN, SVHN -> MNIST; `configs/test5.py:reverse` for MNIST -> SVHN."""

from configs import base


def get_config(direction='forward'):
  c = base.set_direction(base.get_config(), 'test5', direction, 'svhn_cropped', 'mnist')
  c.pretrain_epochs = 10
  c.epochs = 5
  return c
