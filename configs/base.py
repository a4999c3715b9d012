"""Shared defaults of every tljax experiment; each configs/*.py imports this and changes fields."""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.name = 'base'
  # Model: 'small_cnn' (32x32x1), 'efficientnet_b0', 'efficientnet_b2', 'mobilenet_v2',
  # 'mobilenet_v3_small', 'mobilenet_v3_large', 'resnet50' (RGB).
  c.model = 'small_cnn'
  c.image_size = 32
  c.channels = 1
  # The MobileNets' width multiplier (Keras's alpha, any number > 0); the other models take
  # none and refuse anything but 1.0. With pretrained='imagenet', Keras has weights for
  # MobileNetV2 at 0.35, 0.5, 0.75, 1.0, 1.3 and 1.4 (and image_size 96, 128, 160, 192 or 224),
  # MobileNetV3 at 0.75 and 1.0 (1.0 when minimalistic).
  c.alpha = 1.0
  # MobileNetV3 without squeeze-excite and hard-swish, with 3x3 kernels (Keras's minimalistic);
  # the other models refuse True.
  c.minimalistic = False
  # Pretraining: 'source' (train on source_dataset, cached), 'imagenet' (Keras weights:
  # EfficientNets, MobileNets, ResNet50), 'none' (random init).
  c.pretrained = 'source'
  c.source_dataset = 'cifar100'
  c.source_classes = ()  # labels kept (remapped to 0..k-1 in this order); () = all
  c.target_dataset = 'cifar10'
  c.target_classes = ()
  # Image-folder datasets ('image_folder', 'intel_scenes'): each dataset's folder root, holding
  # train/<class>/**/<image> and test/<class>/**/<image> (or Intel's seg_train/seg_train/...).
  c.source_data_dir = ''
  c.target_data_dir = ''
  c.data_dir = ''  # TFDS's data directory ('' = TFDS's default, ~/tensorflow_datasets)
  # Pretrained models, converted weights and image folders prepared at the model's input.
  c.cache_dir = 'artifacts/cache'
  # A prepared image-folder split larger than this (MiB) is trained from a memory map of its
  # cache file instead of RAM; 0 = half the RAM available when the split loads.
  c.data_memory_mb = 0
  c.pretrain_epochs = 10
  c.pretrain_learning_rate = 1e-3
  # BatchNorm moving-average momentum (Keras: 0.99). A few hundred steps on a tiny dataset
  # leave 0.99's averages far from the batch statistics: use 0.9 there.
  c.bn_momentum = 0.99
  # Re-initialise the classifier (the last Dense): 'auto' keeps the source's only when the target
  # is the same dataset (and data dir) with the same classes (source_classes == target_classes),
  # 'always', 'never' (keep it; an error if its shape changes).
  c.new_head = 'auto'
  # Freeze cases: each the number of trainable layers in Keras order. counting 'model': the last
  # N layers of the whole model; 'base': the head plus the last N layers of the base.
  # Freeze cases, each a string (README "Case families"): 'last:N' (the last N layers; a bare
  # int N means the same), 'bias:N' (the biases of the last N layers, plus the head), 'norm:N'
  # (the BatchNorm scale and shift of the last N layers, plus the head), 'block:NAME' or
  # 'layers:A..B' (one contiguous range of layers, plus the head), or a tuple of (regex, label)
  # rules over parameter paths 'layer/param' (labels 'trainable', 'frozen'; fullmatch, first wins).
  # counting 'model': N counts the last layers of the whole model; 'base': the head plus the
  # last N layers of the base.
  c.cases = (1, 4, 9, 11, 17, 23)
  c.case_counting = 'model'
  # Frozen Dropout layers in training: 'keras' = they drop units, as Keras 3 runs a Dropout with
  # trainable=False (the thesis's runs: configs test1-test5); 'off' = frozen layers wholly in
  # inference mode, as Keras's base_model(x, training=False) and PyTorch's eval(). The prefix
  # cache never reaches past a Dropout that drops units, so 'off' lets it cache deeper.
  c.frozen_dropout = 'off'
  # EfficientNet's depthwise convolutions: 'auto' (shifted slices on CPU, XLA grouped
  # convolutions on GPU/TPU), 'slices' or 'grouped'. The same numbers up to float rounding; the
  # reported FLOPs are always the slices formulation's compiled count (README "FLOPs"). Models
  # without depthwise convolutions ignore it.
  c.depthwise_impl = 'auto'
  c.epochs = 10
  c.steps_per_epoch = 0  # 0 = whole epochs; else at most this many steps per epoch
  c.batch_size = 64
  c.eval_batch_size = 256
  c.learning_rate = 1e-3  # Adam (Keras defaults otherwise)
  # Every case trains once per seed (data order, initial head, dropout, and the source
  # pretraining, cached per seed); the summary gives each case's mean and 95 % confidence
  # interval over the seeds (README "Choosing a case").
  c.seeds = (0,)
  # Frozen-prefix caching: run the frozen layers below the lowest trainable one once per example
  # and train the rest on their cached output (same numbers up to float rounding; much faster).
  c.prefix_cache = True
  # The device memory model (README "Device memory model"): an edge device training at this batch, its
  # frozen weights stored as this dtype ('float32', 'float16', 'bfloat16', 'int8').
  c.device_batch_size = 1
  c.device_frozen_dtype = 'float32'
  # Cross-check the model against XLA's memory analysis of each case's train step compiled at
  # device_batch_size (one more compile per case; skipped in dry runs).
  c.device_xla_check = True
  # A budget for the recommendation (0 = no limit): the summary then names the most accurate
  # case within it (python -m tljax.recommend reads an existing workdir the same way).
  # budget_memory picks the memory the budget limits: 'xla' (train_memory_bytes, XLA's analysis
  # of the compiled step at batch_size) or 'device' (device_train_memory_bytes).
  c.max_energy_per_example_j = 0.0
  c.max_train_memory_mb = 0.0
  c.min_accuracy = 0.0
  c.budget_memory = 'xla'
  c.e_mac_j = 3.2e-12  # J per multiply-accumulate (45 nm, the thesis's 3.2 pJ)
  c.log_every_steps = 20
  c.progress = True  # a tqdm bar per case
  # Resume: a checkpoint of the train state every this many steps (0 = none); a rerun with the
  # same workdir skips finished cases and resumes the interrupted one.
  c.checkpoint_every_steps = 200
  c.restart = False  # delete the workdir's earlier results and start over
  # Data parallelism over every local device (and every process after jax.distributed):
  # batches sharded, parameters and optimiser state replicated.
  c.data_parallel = False
  c.coordinator_address = ''  # 'host:port' of process 0, for num_processes > 1
  c.num_processes = 1
  c.process_id = 0
  # XLA:CPU compiler options that tljax measured to be faster (tljax/backend.py); False
  # compiles with XLA's defaults. Ignored on GPU/TPU.
  c.xla_cpu_tuning = True
  # JAX's persistent compilation cache (tljax/backend.py): a second run of the same sweep loads
  # every compiled step from disk instead of compiling it. '' = <cache_dir>/xla_compiled.
  c.compilation_cache = True
  c.compilation_cache_dir = ''
  c.dry_run = False  # one step per case on mock data with random weights
  # Fan-out (README "Sweeps on a cluster"): 'inline' runs every (case, seed) in this process;
  # 'local' and 'slurm' run one submitit job per seed's pretraining and per (case, seed), then
  # gather the summary. None of these fields changes a number: a rerun may change them.
  c.launcher = 'inline'
  c.max_parallel_jobs = 2  # 'local': jobs running at once
  c.slurm_partition = ''  # '' = the cluster's default partition
  c.slurm_gpus_per_job = 1
  c.slurm_time_minutes = 720  # per job; a job reaching it is requeued from its checkpoint
  # Other sbatch options, as on sbatch's command line: '--account=abc --qos=high'.
  c.slurm_extra = ''
  # True: wait for the jobs and write the summary; False ('slurm' only): return once submitted,
  # a final job writes the summary when the others have ended.
  c.launcher_wait = True
  # Requeues of a job from its checkpoint at its time limit (submitit's max_num_timeout), and,
  # when the launcher waits, resubmissions of a failed job.
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
