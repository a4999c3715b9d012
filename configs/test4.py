"""Thesis test 4: EfficientNetB0 with ImageNet weights -> Intel scenes (--config.target_data_dir=PATH)."""

from configs import test2


def get_config():
  c = test2.get_config()
  c.name = 'test4'
  c.target_dataset = 'intel_scenes'
  c.target_data_dir = ''  # the Kaggle download's root: seg_train/seg_train/<class>, seg_test/...
  return c
