"""The record of one (case, seed) run: what trained, accuracy, exact FLOPs, energy, memory, time."""

import dataclasses
from typing import Any

from absl import logging
import jax

from tljax.accounting import costs
from tljax.accounting import meters
from tljax.accounting import traffic
from tljax.training import compiled
from tljax.training import freezing


@dataclasses.dataclass
class Outcome:
  """What training one run gave."""
  test_accuracy: Any  # None when it diverged
  test_loss: Any
  steps: int
  train_wall_s: float  # the fit loop, without filling the prefix cache
  diverged_at: Any
  test_examples: int
  cache: Any = None  # the prefix_cache.Cache it trained on, or None
  measured: Any = None  # the energy meter's meters.Measured over the fit loop, or None
  short: Any = None  # the short-training measurement (case.run_case), or None
  cache_decision: Any = None  # the cache_plan.Decision that said whether it caches
  validation: Any = (None, None)  # (accuracy, loss) on the validation split at the end


def run_record(config, plan, case, out, mesh=None):
  """The run's record: identity, where it trained (`mesh`, default this process's first
  device), costs from the compiled steps, results, time."""
  devices = mesh.devices if mesh is not None else jax.local_devices()[:1]
  rec = dict(case=case.name, family=case.spec.family, seed=compiled.seed_of(config),
             status='ok' if out.diverged_at is None else 'diverged',
             diverged_at_step=out.diverged_at,
             # The compiled costs depend on these: every run of a case must share them.
             device_kind=str(devices[0].device_kind), data_parallel_width=len(devices))
  rec.update(_what_trains(case))
  rec.update(test_accuracy=out.test_accuracy, test_loss=out.test_loss,
             test_examples=out.test_examples, steps=out.steps, batch_size=config.batch_size)
  # The validation accuracy after config.short_training_fraction of the steps, and the seconds
  # that took (training + that evaluation): null without a validation split.
  short = out.short or {}
  rec.update(short_val_accuracy=short.get('short_val_accuracy'),
             short_val_loss=short.get('short_val_loss'), short_train_s=short.get('short_train_s'))
  rec.update(zip(('val_accuracy', 'val_loss'), out.validation))  # at the end; null likewise
  rec.update(_flops(config, plan, case))
  rec.update(traffic.record_fields(config, plan.train_cost, case, plan.device_memory,
                                   rec['energy_per_example_j']))
  rec.update(_run_costs(config, plan, out))
  rec.update(meters.record_fields(out.measured, out.steps, config.batch_size))
  logging.info('Case %s, seed %d: accuracy %s, train %.4g FLOPs/example, %.4g J/example, '
               'memory %s B', case.name, compiled.seed_of(config), out.test_accuracy,
               rec['train_flops_per_example'], rec['energy_per_example_j'],
               rec['train_memory_bytes'])
  return rec


def plan_costs(config, plan):
  """The costs a case's compiled `plan` fixes before it trains, as its records will give them:
  energy_per_example_j (MAC), energy_with_memory_per_example_j, train_memory_bytes (XLA's),
  device_train_memory_bytes. The counted costs: it waits for the plan's counting twin."""
  cost = plan.counted().train_cost
  mac_j = costs.energy_j(cost['flops'] / config.batch_size, config.e_mac_j)
  return dict(
      energy_per_example_j=mac_j,
      energy_with_memory_per_example_j=mac_j + traffic.memory_energy_j(
          cost['bytes_accessed'] / config.batch_size, config.e_byte_j),
      train_memory_bytes=plan.train_cost.get('memory_bytes'),
      device_train_memory_bytes=plan.device_memory['total_bytes'])


def _what_trains(case):
  """Which layers and parameters train. The case's trainable layers (Keras order) are those in
  training mode and those owning a trainable parameter: for bias:N they include the
  BatchNorms whose shift trains on frozen statistics, which are not in training mode."""
  kinds = {l.name: l.kind for l in case.layers}
  by_layer = freezing.trainable_params_by_layer(case.labels)
  chosen = set(case.trainable_names) | set(by_layer)
  names = [l.name for l in case.layers if l.name in chosen]
  trainable_params, total_params = costs.param_counts(case.variables, case.labels)
  return dict(
      trainable_layers=len(names), trainable_layer_names=names,
      active_layers=len(case.trainable_names), active_layer_names=list(case.trainable_names),
      first_trainable_layer=names[0], last_trainable_layer=names[-1],
      layers_with_trainable_params=len(by_layer),
      trainable_param_names=sorted(f'{l}/{p}' for l, ps in by_layer.items() for p in ps),
      trainable_conv_layers=sum(kinds[t] == 'Conv2D' for t in by_layer),
      trainable_depthwise_layers=sum(kinds[t] == 'DepthwiseConv2D' for t in by_layer),
      # The depthwise formulation that ran, and the one whose compiled count the FLOP fields are.
      depthwise_impl=costs.depthwise_impls(case.model)[0],
      depthwise_impl_counted=costs.depthwise_impls(case.model)[1],
      reinitialised_layers=sorted(case.reinit),
      trainable_params=trainable_params, total_params=total_params)


def _flops(config, plan, case):
  """FLOPs from XLA's compiled steps beside the analytic count, and the energy they cost."""
  per_layer = costs.layer_macs(case.model, case.variables,
                                    (config.image_size, config.image_size, config.channels))
  analytic = costs.analytic_train_macs(
      per_layer, freezing.trainable_params_by_layer(case.labels))
  flops_step = plan.train_cost['flops']
  flops_ex = flops_step / config.batch_size
  analytic_train = 2 * analytic['total']
  return dict(
      train_flops_per_step=flops_step, train_flops_per_example=flops_ex,
      forward_flops_per_example=plan.eval_cost['flops'] / plan.eval_batch,
      analytic_train_flops_per_example=analytic_train,
      analytic_forward_flops_per_example=2 * analytic['forward'],
      analytic_macs_per_example=analytic,
      xla_to_analytic_train_flops=flops_ex / analytic_train if analytic_train else None,
      energy_per_example_j=costs.energy_j(flops_ex, config.e_mac_j),
      energy_per_step_j=costs.energy_j(flops_step, config.e_mac_j),
      thesis_energy_per_example_j=analytic['trainable_forward'] * config.e_mac_j)


def _run_costs(config, plan, out):
  """Memory, compute over the whole run (prefix cache included), compile and wall time."""
  cache = out.cache
  cached = plan.cached if cache is not None else None  # the run trained on the cache
  flops_step = plan.train_cost['flops']
  eval_calls = -(-out.test_examples // plan.eval_batch)
  compute = plan.eval_cost['flops'] * eval_calls  # the test split on the whole model
  if cached is None:
    compute += flops_step * out.steps
  else:
    compute += cached.prefix_cost['flops'] * cache.chunks + cached.train_cost['flops'] * out.steps
  wall_s = out.train_wall_s + (cache.seconds if cached else 0.0)
  if cached:
    logging.info('Prefix cache up to %s: %.2f s to compile, %.2f s to fill, %.2f s of training',
                 cached.cut_layer, cached.compile_s, cache.seconds, out.train_wall_s)
  return dict(
      energy_total_j=costs.energy_j(flops_step, config.e_mac_j) * out.steps,
      train_memory_bytes=plan.train_cost.get('memory_bytes'),
      train_memory=plan.train_cost, eval_cost=plan.eval_cost,
      # The device memory model (docs/accounting.md "The device memory model") and XLA's
      # analysis of the same step compiled at device_batch_size (None in a dry run).
      device_train_memory_bytes=plan.device_memory['total_bytes'],
      device_memory=plan.device_memory,
      xla_memory_at_device_batch_bytes=plan.device_xla and plan.device_xla['memory_bytes'],
      device_to_xla_memory=plan.device_xla and plan.device_xla['device_to_xla_memory'],
      # With the cache, compile_s includes compiling the prefix and suffix steps and wall_s
      # filling the cache.
      compile_s=plan.compile_s + (plan.cached.compile_s if plan.cached else 0.0),
      wall_s=wall_s,
      examples_per_s=out.steps * config.batch_size / wall_s if wall_s > 0 else None,
      prefix_cache=cached is not None,
      prefix_cache_cut_layer=cached.cut_layer if cached else None,
      cached_train_flops_per_step=cached.train_cost['flops'] if cached else None,
      prefix_flops_total=cached.prefix_cost['flops'] * cache.chunks if cached else 0.0,
      compute_flops_total=compute,
      prefix_cache_bytes=cache.nbytes if cached else 0,
      prefix_cache_location=cache.location if cached else None,
      prefix_cache_examples=cache.rows if cached else 0,
      prefix_cache_decision=out.cache_decision and out.cache_decision.record())
