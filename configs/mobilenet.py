"""Edge transfer: MobileNetV2 alpha 0.35 at 128x128 (Tiny-Training's mbv2-w0.35) with Keras's
ImageNet weights, fine-tuned on your image folder with the case families of configs/families.py
at MobileNetV2's block boundaries, three seeds.

  python launch.py --config=configs/mobilenet.py --config.target_data_dir=B

The folder holds train/<class>/**/<image> and test/<class>/**/<image>. Offline, or for the
folder pair of configs/folders.py (pretrained on folder A, transferred to B), add
--config.pretrained=source --config.source_data_dir=A; --config.pretrained=none starts from
random weights.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.name = 'mobilenet'
  c.model = 'mobilenet_v2'
  c.alpha = 0.35
  c.image_size = 128
  c.channels = 3
  c.pretrained = 'imagenet'
  c.source_dataset = 'image_folder'
  c.target_dataset = 'image_folder'
  c.pretrain_epochs = 3
  # A few hundred steps on a small folder: 0.99's moving averages (Keras's MobileNets: 0.999)
  # would lag the batch statistics of the BatchNorm layers that train.
  c.bn_momentum = 0.9
  # counting 'base': the head plus the last N of the base's 153 layers, cut at block boundaries:
  # 0 = head only, 3 = + Conv_1 (the top), 11 = + block_16, 38 = + the 160-filter stage
  # (block_13..15), 64 = + the 96-filter stage (block_10..12), 153 = everything.
  c.case_counting = 'base'
  c.cases = ('last:0', 'last:3', 'last:11', 'last:38', 'last:64', 'last:153', 'bias:153',
             'norm:153', 'block:block_16', 'block:block_1')
  c.seeds = (0, 1, 2)
  c.epochs = 5
  c.batch_size = 32
  c.eval_batch_size = 128
  return c
