"""Offline default: small CNN pretrained on digits 0-4, transferred to digits 5-9 (scikit-learn)."""

from configs import base


def get_config():
  c = base.get_config()
  c.name = 'default'
  c.source_dataset = 'digits'
  c.source_classes = (0, 1, 2, 3, 4)
  c.target_dataset = 'digits'
  c.target_classes = (5, 6, 7, 8, 9)
  c.new_head = 'always'  # digits 5-9 are new classes: a fresh classifier, Yosinski et al. 2014
  c.bn_momentum = 0.9  # ~20 steps per epoch: 0.99's moving averages would lag (50 % accuracy)
  c.pretrain_epochs = 10
  c.epochs = 6
  c.batch_size = 32
  c.log_every_steps = 10
  return c
