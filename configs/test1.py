"""Thesis test 1: small CNN, CIFAR-100 -> CIFAR-10; `configs/test1.py:reverse` for CIFAR-10 -> CIFAR-100."""

from configs import base


def get_config(direction='forward'):
  c = base.set_direction(base.get_config(), 'test1', direction, 'cifar100', 'cifar10')
  c.pretrain_epochs = 20
  c.epochs = 10
  return c
