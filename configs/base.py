"""Shared defaults of every tljax experiment; each configs/*.py imports this and changes fields."""

import ml_collections


def get_config():
  """Every config field and its default. What each does, what it accepts and what it changes:
  docs/configuration.md (generated from tljax/config/checks.py FIELDS) or `python launch.py
  --help`."""
  c = ml_collections.ConfigDict()
  c.name = 'base'
  # The model and the data.
  c.model = 'small_cnn'
  c.image_size = 32
  c.channels = 1
  c.alpha = 1.0
  c.minimalistic = False
  c.pretrained = 'source'
  c.source_dataset = 'cifar100'
  c.source_classes = ()
  c.target_dataset = 'cifar10'
  c.target_classes = ()
  c.source_data_dir = ''
  c.target_data_dir = ''
  c.data_dir = ''
  c.cache_dir = 'artifacts/cache'
  c.data_memory_mb = 0
  # Source pretraining, then the cases.
  c.pretrain_epochs = 10
  c.pretrain_learning_rate = 1e-3
  # Every seed fine-tunes the one model pretrained with this seed (-1: each seed its own).
  c.pretrain_seed = 0
  c.bn_momentum = 0.99
  c.new_head = 'auto'
  c.cases = (1, 4, 9, 11, 17, 23)
  c.case_counting = 'model'
  c.frozen_dropout = 'off'
  c.depthwise_impl = 'auto'
  c.epochs = 10
  c.steps_per_epoch = 0
  c.batch_size = 64
  c.eval_batch_size = 256
  c.learning_rate = 1e-3
  c.seeds = (0,)
  c.prefix_cache = True
  c.prefix_cache_always = False
  c.validation_fraction = 0.0
  c.proxies = True
  c.proxy_batches = 4
  c.proxy_examples = 1024
  c.short_training_fraction = 0.1
  c.search = 'exhaustive'
  c.search_top_k = 3
  c.halving_eta = 3
  # Below the last rung a case within the cut line's 95 % interval goes on; the last rung (the
  # first seed's full runs) keeps the best only (docs/search.md "Halving").
  c.halving_confidence = 0.95
  # The accounting: the device memory model, the budget of the recommendation, energy.
  c.device_batch_size = 1
  c.device_frozen_dtype = 'float32'
  c.device_xla_check = True
  c.max_energy_per_example_j = 0.0
  c.max_train_memory_mb = 0.0
  c.min_accuracy = 0.0
  c.budget_memory = 'xla'
  c.include_incomplete = False
  c.e_mac_j = 3.2e-12
  c.e_byte_j = 1.6e-10
  c.budget_energy = 'mac'
  c.energy_meter = 'off'
  c.energy_idle_s = 5.0
  # The run: logging, checkpoints, devices and processes, compilation.
  c.log_every_steps = 20
  c.progress = True
  c.checkpoint_every_steps = 200
  c.restart = False
  c.data_parallel = False
  c.coordinator_address = ''
  c.num_processes = 1
  c.process_id = 0
  c.xla_cpu_tuning = True
  c.compilation_cache = True
  c.compilation_cache_dir = ''
  c.compile_workers = 0
  c.dry_run = False
  # Jobs on a cluster (docs/clusters.md).
  c.launcher = 'inline'
  c.max_parallel_jobs = 2
  c.slurm_partition = ''
  c.slurm_gpus_per_job = 1
  c.slurm_time_minutes = 720
  c.slurm_extra = ''
  c.launcher_wait = True
  c.job_retries = 3
  return c

def as_the_thesis_ran(c):
  """The thesis's Keras semantics (configs test1-test5): frozen Dropout layers drop units in
  training, as Keras's trainable=False leaves them."""
  c.frozen_dropout = 'keras'
  return c


def set_direction(c, name, direction, source, target):
  """A two-way thesis test: `forward` trains source -> target, `reverse` the other way."""
  if direction not in ('forward', 'reverse'):
    raise ValueError(f"configs/{name}.py:{direction}: the direction is 'forward' or 'reverse'.")
  c.name = name if direction == 'forward' else f'{name}_reverse'
  c.source_dataset, c.target_dataset = (source, target) if direction == 'forward' else (
      target, source)
  return as_the_thesis_ran(c)
