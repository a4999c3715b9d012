"""The config fields of the accounting: energy, the device memory model, the budget, caching."""

import math

from tljax.accounting import device_memory
from tljax.accounting import meters
from tljax.config.fields import Field, doc, int_at_least, number_in, one_of, safe
from tljax.decision import pareto

# A multiply-accumulate costs picojoules; more than this is a mistyped unit (3.2 for 3.2e-12).
MAX_E_MAC_J = 1e-6
# Moving a byte costs picojoules too (DRAM: 160 pJ per byte); likewise.
MAX_E_BYTE_J = 1e-6
# Owned by the device memory model (bytes per dtype) and the Pareto front (memory fields).
DEVICE_DTYPES = tuple(device_memory.DTYPE_BYTES)
BUDGET_MEMORY = tuple(pareto.MEMORY_FIELDS)
BUDGET_ENERGY = tuple(pareto.ENERGY_FIELDS)
ENERGY_METERS = meters.METERS

FIELDS = {
    'e_mac_j': doc('energy of one multiply-accumulate in J (45 nm: 3.2 pJ)', number_in(
        0, MAX_E_MAC_J, lo_open=True, hi_open=False,
        what=' (J per multiply-accumulate; 3.2 pJ = 3.2e-12)')),
    'e_byte_j': doc('energy of moving one byte to or from memory in J (45 nm DRAM: 640 pJ per '
                     '32-bit read = 1.6e-10; 8 KB SRAM: 1.25e-12)', number_in(
                         0, MAX_E_BYTE_J, lo_open=False, hi_open=False,
                         what=' (J per byte; 160 pJ = 1.6e-10; 0 = traffic costs nothing)')),
    'device_batch_size': doc("the edge device's batch in the device memory model",
                              int_at_least(1, ' (examples per step on the edge device)')),
    'device_frozen_dtype': doc('how the device memory model stores frozen weights (TinyTL: int8)',
                                one_of(DEVICE_DTYPES)),
    'device_xla_check': doc("cross-check the device memory model with XLA's at "
                             'device_batch_size (one more compile per case)', safe(Field(
                                 bool, lambda v, c: True, 'must be True or False'))),
    'max_energy_per_example_j': doc('budget: training energy per example (J), as '
                                     'budget_energy says', safe(number_in(
        0, math.inf, lo_open=False, hi_open=True, what=' (J per training example; 0 = no limit)'))),
    'max_train_memory_mb': doc('budget: train memory (MiB), as budget_memory says', safe(
        number_in(0, math.inf, lo_open=False, hi_open=True, what=' (MiB; 0 = no limit)'))),
    'min_accuracy': doc('budget: least mean test accuracy', safe(number_in(
        0, 1, lo_open=False, hi_open=False, what=' (a fraction: 0.9 = 90 %; 0 = no limit)'))),
    'budget_memory': doc("the memory the front and the budget read: 'xla' (the compiled step's) "
                          "or 'device' (the device model's)", safe(one_of(BUDGET_MEMORY))),
    'budget_energy': doc("the energy the front, figures and budget read: 'mac' (FLOPs / 2 x "
                          "e_mac_j) or 'memory' (+ bytes accessed x e_byte_j)",
                          safe(one_of(BUDGET_ENERGY))),
    'energy_meter': doc("measure each run's training energy: 'off', 'auto' (NVML on a GPU, RAPL "
                         "on a CPU, if readable), 'nvml' or 'rapl'",
                         safe(one_of(ENERGY_METERS))),
    'energy_idle_s': doc("seconds of idle power measured before the sweep (the meter's "
                          'baseline, subtracted)', safe(number_in(
                              0, 600, lo_open=True, hi_open=False, what=' (s)'))),
    'prefix_cache_always': doc('cache the frozen prefix at the deepest cut in every run, even '
                                'where the cost model says it costs more than it saves',
                                Field(bool, lambda v, c: True, 'must be True or False')),
    'include_incomplete': doc('count cases with runs missing or failed on the front and in the '
                               'recommendation', safe(Field(bool, lambda v, c: True,
                                                             'must be True or False'))),
}
