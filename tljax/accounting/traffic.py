"""Memory traffic: the counted step's bytes accessed, an edge device's traffic, their energy."""

import math

import flax

from tljax.accounting import device_memory

# Energy of moving one byte (config.e_byte_j), 45 nm CMOS (Horowitz, ISSCC 2014): a 32-bit DRAM
# read costs about 640 pJ, so 640 pJ / 4 bytes = 160 pJ per byte by default; a 32-bit read from
# an 8 KB SRAM about 5 pJ, 1.25 pJ per byte, the alternative for data kept on chip.
DEFAULT_E_BYTE_J = 640e-12 / 4
SRAM_E_BYTE_J = 5e-12 / 4
# The parts of an edge step's traffic (edge_traffic), in the order docs/accounting.md gives them.
EDGE_PARTS = ('input_bytes', 'weights_read_bytes', 'activations_bytes', 'gradients_bytes',
              'optimizer_bytes', 'weights_updated_bytes')


def memory_energy_j(nbytes, e_byte_j=DEFAULT_E_BYTE_J):
  """Energy of moving `nbytes` bytes: nbytes x e_byte_j."""
  return float(nbytes) * e_byte_j


def _stored_bytes(variables, trainable_params, frozen_dtype):
  """{layer: bytes of its parameters as the device stores them: trainable float32, frozen as
  `frozen_dtype`}."""
  params = flax.core.unfreeze(variables.get('params', {}))
  out = {}
  for layer, tree in params.items():
    train = set(trainable_params.get(layer, ()))
    out[layer] = sum(
        math.prod(x.shape) * (device_memory.F32_BYTES if p in train
                              else device_memory.DTYPE_BYTES[frozen_dtype])
        for p, x in flax.traverse_util.flatten_dict(tree, sep='/').items())
  return out


def edge_traffic(memory, variables, trainable_params, input_shape):
  """Bytes an edge device moves to and from its memory in one training step, from the device
  memory model's breakdown `memory` (device_memory.device_train_memory: its batch, dtype,
  weights, kept activations, gradients, optimizer state and layers in Keras order).

  input_bytes: the input batch, read once; weights_read_bytes: every weight and statistic read in
  the forward pass as stored, and again, in the backward pass, the parameters of every layer
  above the lowest layer with a trainable parameter (its input gradient needs them);
  activations_bytes: the kept activations, written in the forward pass and read in the backward
  pass; gradients_bytes: each trainable parameter's gradient written by the backward pass and
  read by the update; optimizer_bytes: the optimizer's slots read and written by the update;
  weights_updated_bytes: the trainable weights read and written by the update. Layer outputs and
  their gradients stay in the working buffer, on chip: not counted. Returns those parts,
  total_bytes (per step), batch_size and frozen_dtype (docs/accounting.md "Edge traffic").
  """
  names = [r['name'] for r in memory['layers']]
  has = [i for i, n in enumerate(names) if trainable_params.get(n)]
  lowest = min(has) if has else len(names)
  stored = _stored_bytes(variables, trainable_params, memory['frozen_dtype'])
  backward = sum(stored.get(n, 0) for n in names[lowest + 1:])
  out = dict(
      input_bytes=device_memory.F32_BYTES * memory['batch_size'] * math.prod(input_shape),
      weights_read_bytes=memory['weights_bytes'] + backward,
      activations_bytes=2 * memory['activation_bytes'],
      gradients_bytes=2 * memory['gradient_bytes'],
      optimizer_bytes=2 * memory['optimizer_bytes'],
      weights_updated_bytes=2 * memory['trainable_weights_bytes'])
  return dict(out, total_bytes=sum(out[k] for k in EDGE_PARTS),
              batch_size=memory['batch_size'], frozen_dtype=memory['frozen_dtype'])


def record_fields(config, train_cost, case, memory, energy_per_example_j):
  """The run record's traffic fields: bytes accessed and transcendentals per example of the
  compiled train step `train_cost` (the counted twin's where there is one,
  costs.with_counted_flops), the energy of those bytes at config.e_byte_j, that energy added to
  the MAC energy `energy_per_example_j`, and the edge traffic of `case` (a case.Case with
  variables) from its device memory breakdown `memory`."""
  b = config.batch_size
  bytes_ex = train_cost['bytes_accessed'] / b
  memory_j = memory_energy_j(bytes_ex, config.e_byte_j)
  trainable_params, _ = device_memory.case_inputs(case)
  edge = edge_traffic(memory, case.variables, trainable_params,
                      (config.image_size, config.image_size, config.channels))
  return dict(bytes_accessed_per_example=bytes_ex,
              transcendentals_per_example=train_cost['transcendentals'] / b,
              memory_energy_per_example_j=memory_j,
              energy_with_memory_per_example_j=energy_per_example_j + memory_j,
              edge_traffic_bytes_per_step=edge['total_bytes'], edge_traffic=edge)
