"""Your own images: small CNN pretrained on one image folder, transferred to another.

  python launch.py --config=configs/folders.py --config.source_data_dir=A --config.target_data_dir=B

Each folder holds train/<class>/**/<image> and test/<class>/**/<image>; for EfficientNet add
--config.model=efficientnet_b0 --config.image_size=224 --config.channels=3.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.name = 'folders'
  c.source_dataset = 'image_folder'
  c.target_dataset = 'image_folder'
  c.pretrain_epochs = 3
  c.epochs = 2
  return c
