"""The data benchmark on a tiny generated folder: figures measured, the row formatted."""

import os

from benchmarks import data as bench_data


def test_measure_prepares_then_reuses(tmp_path):
  root = bench_data.make_folder(str(tmp_path / 'f'), 40, 10, 20, classes=4)
  assert sorted(os.listdir(os.path.join(root, 'train'))) == [f'class {k}' for k in range(4)]
  cache = str(tmp_path / 'cache')
  first = bench_data.measure(root, 'small_cnn', 32, cache, input_seconds=0.2)
  second = bench_data.measure(root, 'small_cnn', 32, cache, input_seconds=0.2)
  assert first['examples'] == second['examples'] == 50
  assert first['prepared_bytes'] == 50 * 32 * 32 * 1
  assert first['peak_above_baseline_bytes'] >= 0 and first['input_examples_per_s'] > 0
  assert second['seconds'] < first['seconds']  # nothing decoded the second time
  assert len(os.listdir(os.path.join(cache, 'prepared'))) == 2  # train and test, once
  row = bench_data.format_row('tiny', dict(model='small_cnn', train=40, test=10, first=first,
                                           second=second, train_step_case=1,
                                           train_step_examples_per_s=1000.0))
  assert row.startswith('| tiny | small_cnn | 40 + 10 |') and row.count('|') == \
      bench_data.HEADER.splitlines()[0].count('|')
