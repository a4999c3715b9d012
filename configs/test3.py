"""Thesis test 3: EfficientNetB2 with ImageNet weights -> CIFAR-100 at 224x224 (Table 3.1 cases)."""

from configs import test2


def get_config():
  c = test2.get_config()
  c.name = 'test3'
  c.model = 'efficientnet_b2'
  c.cases = (0, 3, 7, 10, 15, 23, 31, 38)  # Table 3.1, right
  return c
