"""The PyTorch peers: the small CNN and EfficientNetB0 in torch.nn, their timed train steps, the whole sweep."""

import os
import time

import numpy as np

from benchmarks import timing


def small_cnn(torch, num_classes):
  """The small CNN as 23 modules, one per Keras layer (ReLU inside its conv/dense)."""
  nn = torch.nn
  layers, cin = [], 1
  for f in (32, 64, 128):
    for _ in range(2):
      layers += [nn.Sequential(nn.Conv2d(cin, f, 3, padding=1), nn.ReLU()),
                 nn.BatchNorm2d(f, eps=1e-3, momentum=0.01)]
      cin = f
    layers += [nn.MaxPool2d(2), nn.Dropout(0.25)]
  layers += [nn.Flatten(), nn.Sequential(nn.Linear(4 * 4 * 128, 128), nn.ReLU()),
             nn.BatchNorm1d(128, eps=1e-3, momentum=0.01), nn.Dropout(0.5),
             nn.Linear(128, num_classes)]
  return layers


def b0(torch, num_classes):
  """EfficientNetB0 (keras.applications layout, BN eps 1e-3) + the tljax head, by hand.

  Returns (model, {'base': modules, 'top': modules, 'head': modules}).
  """
  nn = torch.nn
  from tljax.models.efficientnet import block_specs  # pylint: disable=g-import-not-at-top

  def bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

  class MBConv(nn.Module):
    """Inverted residual block with squeeze-excite and drop-connect."""

    def __init__(self, s):
      super().__init__()
      f = s.filters
      self.expand = (nn.Sequential(nn.Conv2d(s.filters_in, f, 1, bias=False), bn(f), nn.SiLU())
                     if s.expand_ratio != 1 else nn.Identity())
      self.dw = nn.Sequential(nn.Conv2d(f, f, s.kernel_size, s.strides, s.kernel_size // 2,
                                        groups=f, bias=False), bn(f), nn.SiLU())
      self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(f, s.se_filters, 1), nn.SiLU(),
                              nn.Conv2d(s.se_filters, f, 1), nn.Sigmoid())
      self.project = nn.Sequential(nn.Conv2d(f, s.filters_out, 1, bias=False), bn(s.filters_out))
      self.skip, self.drop = s.has_skip, s.drop_rate

    def forward(self, x):
      y = self.dw(self.expand(x))
      y = self.project(y * self.se(y))
      if not self.skip:
        return y
      if self.training and self.drop > 0:
        keep = torch.rand(y.shape[0], 1, 1, 1, device=y.device) >= self.drop
        y = y * keep / (1.0 - self.drop)
      return y + x

  class B0(nn.Module):
    """Normalisation, stem, 16 blocks, top conv, head."""

    def __init__(self):
      super().__init__()
      self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
      self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
      self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), bn(32), nn.SiLU())
      self.blocks = nn.Sequential(*[MBConv(s) for s in block_specs('b0')])
      self.top = nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), bn(1280), nn.SiLU())
      self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                nn.Linear(1280, 128), nn.ReLU(),
                                nn.BatchNorm1d(128, eps=1e-3, momentum=0.01), nn.Dropout(0.5),
                                nn.Linear(128, num_classes))

    def forward(self, x):
      x = (x / 255.0 - self.mean) / self.std
      return self.head(self.top(self.blocks(self.stem(x))))

  m = B0()
  return m, {'base': [m.stem, m.blocks, m.top], 'top': [m.top], 'head': [m.head]}


def step_peer(spec, cases, xn, yn, timing_args, wait_idle=0.0):
  """The step benchmark's peer: each case's train step timed as timing.median_time does.

  cases: [(case, kind)], kind the case for the small CNN, 'head'/'top'/'all' for EfficientNet.
  xn, yn: one batch (NHWC float32, int labels).
  """
  import torch  # pylint: disable=g-import-not-at-top
  if spec['model'] not in ('small_cnn', 'efficientnet_b0'):  # the edge rows: no port yet
    return dict(versions={'torch': torch.__version__}, cases=[],
                note=f'no torch.nn port of {spec["model"]} in benchmarks/torch_peers.py')
  device, sync = timing.torch_device(torch)
  torch.manual_seed(0)
  # channels_last: oneDNN's fast layout for convolutions (1.3-1.8x over NCHW here), cuDNN's too.
  x = torch.from_numpy(xn).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  x = x.to(device)
  y = torch.from_numpy(yn.astype(np.int64)).to(device)
  out = []
  for n, kind in cases:
    if spec['model'] == 'small_cnn':
      layers = small_cnn(torch, spec['num_classes'])
      model = torch.nn.Sequential(*layers)
      frozen = layers[:len(layers) - n]
    else:
      model, groups = b0(torch, spec['num_classes'])
      frozen = {'head': groups['base'], 'top': [m for m in groups['base'] if m is not groups['top'][0]],
                'all': []}[kind]
    model.to(device=device, memory_format=torch.channels_last)
    model.train()
    for m in frozen:
      m.requires_grad_(False)
      m.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(model=model, opt=opt):
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(model(x), y)
      loss.backward()
      opt.step()
      return loss

    t0 = time.perf_counter()
    sync(step())
    first_s = time.perf_counter() - t0
    waited = timing.wait_for_idle(wait_idle, log=timing.stderr)
    with timing.CpuContention() as contention:
      step_s, samples = timing.median_time(step, sync=sync, **timing_args)
    out.append(dict(case=n, step_s=step_s, samples_s=samples,
                    examples_per_s=spec['batch_size'] / step_s, first_step_s=first_s,
                    trainable_params=sum(p.numel() for p in params),
                    other_cpu_share=contention.result.get('other_cpu_share'),
                    waited_for_idle_s=waited))
  return dict(versions=timing.torch_versions(torch, device), threads=torch.get_num_threads(),
              device=str(device), cases=out,
              note='eager, channels_last; frozen layers requires_grad=False, eval mode')


# --- The whole sweep, as a user's PyTorch script ---------------------------------------------


def sweep(job, data, log=print):
  """The small-CNN sweep in eager PyTorch: pretraining on the source (every layer), then per
  case the pretrained weights with a new head, the frozen layers `requires_grad=False` in eval
  mode (as step_peer freezes them), training with a checkpoint per epoch, evaluation.

  job: benchmarks.sweep's job (epochs, cases, batch sizes, learning rate, seed, workdir).
  data: {(role, split): (uint8 NHWC images, int labels)}. Returns the phases' wall seconds and
  test accuracies.
  """
  t0 = time.perf_counter()
  import torch  # pylint: disable=g-import-not-at-top
  imports_s = time.perf_counter() - t0
  device, _ = timing.torch_device(torch)
  t1 = time.perf_counter()
  # The arrays once as float tensors in [0, 1], NCHW in the channels_last memory layout, on the
  # device (the GPU holds the whole small dataset: 0.6 GB at full size).
  tensors = {k: (torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0)
                 .contiguous(memory_format=torch.channels_last).to(device),
                 torch.from_numpy(y.astype(np.int64)).to(device)) for k, (x, y) in data.items()}
  load_s = time.perf_counter() - t1
  classes = {role: job['data_info']['roles'][role]['classes'] for role in ('source', 'target')}
  torch.manual_seed(job['seed'])
  ckpt_dir = os.path.join(job['workdir'], 'checkpoints')
  os.makedirs(ckpt_dir, exist_ok=True)
  loss_fn = torch.nn.CrossEntropyLoss()
  bs = job['batch_size']

  def train(model, frozen, x, y, epochs, name):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=job['learning_rate'])
    steps = 0
    for epoch in range(epochs):
      model.train()
      for m in frozen:
        m.eval()
      te = time.perf_counter()
      perm = torch.randperm(len(y), device=device)
      for i in range(len(y) // bs):  # the last partial batch dropped, as tljax does
        idx = perm[i * bs:(i + 1) * bs]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        steps += 1
      torch.save({'model': model.state_dict(), 'optimizer': opt.state_dict(), 'epoch': epoch},
                 os.path.join(ckpt_dir, f'{name}.pt'))
      log(f'{name} epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, '
          f'{(len(y) // bs) * bs / (time.perf_counter() - te):.0f} ex/s')
    return steps

  def evaluate(model, x, y):
    model.eval()
    correct = 0
    with torch.no_grad():
      for i in range(0, len(y), job['eval_batch_size']):
        out = model(x[i:i + job['eval_batch_size']])
        correct += (out.argmax(1) == y[i:i + job['eval_batch_size']]).sum().item()
    return correct / len(y)

  phases = {}
  t_sweep = time.perf_counter()
  log('pretraining')
  tp = time.perf_counter()
  model = torch.nn.Sequential(*small_cnn(torch, classes['source']))
  model.to(device=device, memory_format=torch.channels_last)
  steps = train(model, [], *tensors[('source', 'train')], job['pretrain_epochs'], 'pretrain')
  acc = evaluate(model, *tensors[('source', 'test')])
  pretrained = {k: v.clone() for k, v in model.state_dict().items()}
  torch.save(pretrained, os.path.join(ckpt_dir, 'pretrained.pt'))
  phases['pretraining'] = dict(wall_s=time.perf_counter() - tp, test_accuracy=acc, steps=steps)
  log(f'pretraining: {phases["pretraining"]["wall_s"]:.1f} s, source test accuracy {acc:.4f}')
  for n in job['cases']:
    tc = time.perf_counter()
    layers = small_cnn(torch, classes['target'])
    model = torch.nn.Sequential(*layers)
    head = f'{len(layers) - 1}.'  # a new classifier: the pretrained weights but the last Linear's
    model.load_state_dict({k: v for k, v in pretrained.items() if not k.startswith(head)},
                          strict=False)
    model.to(device=device, memory_format=torch.channels_last)
    frozen = layers[:len(layers) - n]
    for m in frozen:
      m.requires_grad_(False)
    steps = train(model, frozen, *tensors[('target', 'train')], job['epochs'], f'case_{n}')
    acc = evaluate(model, *tensors[('target', 'test')])
    phases[f'case {n}'] = dict(wall_s=time.perf_counter() - tc, test_accuracy=acc, steps=steps)
    log(f'case {n}: {phases[f"case {n}"]["wall_s"]:.1f} s, test accuracy {acc:.4f}')
  sweep_s = time.perf_counter() - t_sweep
  return dict(framework='torch', versions=timing.torch_versions(torch, device),
              threads=torch.get_num_threads(), device=str(device), imports_s=imports_s,
              data_load_s=load_s,
              phases=phases, other_s=sweep_s - sum(p['wall_s'] for p in phases.values()),
              sweep_s=sweep_s,
              note='eager, channels_last, batches indexed from tensors in memory; frozen layers '
                   'requires_grad=False, eval mode; a checkpoint per epoch')
