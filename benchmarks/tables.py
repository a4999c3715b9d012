"""The benchmarks' tables as text: the step benchmark's, the prefix cache's, the sweep's."""

import textwrap

# Ratio of (step time fraction) to (FLOP fraction) the frozen cases should stay within.
TRACKING_TARGET = 1.3


def _f(v, fmt):
  return '-' if v is None else format(v, fmt)


def step_tables(result):
  """The speed table and the time-vs-FLOPs table of one model, as text."""
  peers = list(result['peers'])
  head = (f'{result["model"]}: batch {result["batch_size"]}, {result["image_size"]}x'
          f'{result["image_size"]}x{result["channels"]}, {result["counting"]!r} counting; '
          f'input pipeline {_f(result["input"]["examples_per_s"], ".0f")} ex/s '
          f'({result["input"]["source"]})')
  share = result.get('contention', {}).get('other_cpu_share')
  if share is not None:
    head += (f'\nother processes used {share:.0%} of the CPU during these timings'
             + (' (timings disturbed)' if share > 0.05 else ''))
  cols = (f'{"case":<12}{"layers":>7}{"ms/step":>10}{"ex/s":>9}{"GFLOP":>9}{"GFLOP/s":>9}'
          f'{"compile s":>11}{"input ex/s":>12}'
          + ''.join(f'{p + " ex/s":>15}' for p in peers) + f'{"tljax/best":>12}{"others%":>9}')
  lines = [head, cols, '-' * len(cols)]
  for r in result['cases']:
    label = r['label'] + (f' {r["depthwise_impl"]}' if r['depthwise_impl'] else '')
    lines.append(
        f'{label:<12}{r["trainable_layers"]:>7}{r["step_s"] * 1e3:>10.1f}'
        f'{r["examples_per_s"]:>9.1f}{r["train_flops_per_step"] / 1e9:>9.2f}'
        f'{r["gflops_per_s"]:>9.1f}{r["compile_s"]:>11.1f}'
        f'{_f(result["input"]["examples_per_s"], ".0f"):>12}'
        + ''.join(f'{_f(r["peers"].get(p), ".1f"):>15}' for p in peers)
        + f'{_f(r["ratio_to_fastest_peer"], ".2f"):>12}'
        + f'{_f(None if r["max_other_cpu_share"] is None else 100 * r["max_other_cpu_share"], ".0f"):>9}')
  notes = [f'  {p}: {v["note"]}' for p, v in result['peers'].items() if v.get('note')]
  notes.append('  tljax/best = tljax ex/s / fastest peer ex/s; others% = most CPU other processes '
               'took during any timing of the row')
  if notes:
    lines += ['peers:'] + notes
  lines.append('')
  cols2 = (f'{"case":<12}{"time/full":>11}{"FLOPs/full":>12}{"quotient":>10}'
           + ''.join(f'{p + " time/full":>20}' for p in peers))
  lines += [f'{result["model"]}: step time and train FLOPs as fractions of full fine-tuning '
            f'(target: quotient <= {TRACKING_TARGET}; * = the case is slower than its FLOP share '
            f'by more, + = faster than it by more than {TRACKING_TARGET}x)', cols2,
            '-' * len(cols2)]
  for r in result['cases']:
    label = r['label'] + (f' {r["depthwise_impl"]}' if r['depthwise_impl'] else '')
    q = r['time_to_flops']
    flag = ' ' if q is None else '*' if q > TRACKING_TARGET else '+' if q < 1 / TRACKING_TARGET else ' '
    lines.append(f'{label:<12}{_f(r["time_frac_full"], ".3f"):>11}'
                 f'{_f(r["flops_frac_full"], ".3f"):>12}{_f(q, ".2f"):>9}{flag}'
                 + ''.join(f'{_f(r["peer_time_frac_full"].get(p), ".3f"):>20}' for p in peers))
  return '\n'.join(lines)


def prefix_table(result):
  """A few lines: the two runs and the quotients."""
  r = result
  lines = [f'prefix cache: head-only case, {r["epochs"]} epochs, {r["train_examples"]} train + '
           f'{r["test_examples"]} test synthetic examples, end to end = compile + fill + train',
           f'{"run":10s} {"compile s":>10s} {"train s":>9s} {"end to end s":>13s}  test loss']
  for name in ('cached', 'uncached'):
    x = r['runs'][name]
    lines.append(f'{name:10s} {x["compile_s"]:10.2f} {x["wall_s"]:9.2f} {x["end_to_end_s"]:13.2f}'
                 f'  {x["test_loss"]:.6f}')
  lines.append(f'speed-up: {r["speedup_end_to_end"]:.1f}x end to end, '
               f'{r["speedup_training"]:.1f}x without compilation; |loss difference| '
               f'{r["loss_difference"]:.1e}, |accuracy difference| {r["accuracy_difference"]:.1e}')
  return '\n'.join(lines)


# The whole-sweep benchmark's frameworks as the table names them, and its targets
# (benchmarks/README.md "The whole sweep"): the whole sweep at most this share of the fastest
# peer's time, no phase slower.
SWEEP_NAMES = {'tljax': 'tljax', 'torch': 'PyTorch', 'keras': 'Keras'}
SWEEP_TARGET = 0.8


def _sweep_rows(result):
  """[(row name, {framework: seconds})]: start-up, pretraining, the cases, other, total."""
  fws = {n: r for n, r in result['frameworks'].items() if r.get('available')}
  phases = []
  for r in fws.values():
    phases += [p for p in r['phases'] if p not in phases]
  rows = [('start-up (imports)', {n: r['imports_s'] for n, r in fws.items()})]
  rows += [(p, {n: r['phases'][p]['wall_s'] for n, r in fws.items() if p in r['phases']})
           for p in phases]
  rows.append(('other', {n: r['other_s'] for n, r in fws.items()}))
  rows.append(('total', {n: r['imports_s'] + r['sweep_s'] for n, r in fws.items()}))
  return rows


def _tljax_compile(tl, row):
  if row == 'total':
    return tl['compile_s'] + ((tl.get('compile_pool') or {}).get('total_s') or 0.0)
  if row == 'other':
    return tl.get('other_compile_s')
  return tl['phases'].get(row, {}).get('compile_s')


def sweep_table(result):
  """The whole-sweep table: seconds per phase and framework, tljax / fastest peer, tljax's parts
  of each phase, the test accuracies."""
  s, d = result['settings'], result['data']
  fws = result['frameworks']
  names = [n for n in fws if fws[n].get('available')]
  peers = [n for n in names if n != 'tljax']
  has_tljax = 'tljax' in names
  roles = d['roles']
  lines = textwrap.wrap(
      f'Sweep benchmark {result["date"]}, {result["machine"]["cpu"]}, '
      f'{result["machine"]["cores"]} cores: small CNN {s["image"]}, batch {s["batch_size"]}, '
      f'{s["optimizer"]}; data in memory ({"generated" if d["generated"] else "image folders"}):'
      f' source {roles["source"]["train"]:,} + {roles["source"]["test"]:,} '
      f'({roles["source"]["classes"]} classes), target {roles["target"]["train"]:,} + '
      f'{roles["target"]["test"]:,} ({roles["target"]["classes"]} classes); pretraining '
      f'{s["pretrain_epochs"]} epochs, cases {s["epochs"]} epochs', 100)
  for n in names:
    v = ', '.join(f'{k} {x}' for k, x in fws[n].get('versions', {}).items())
    lines.append(f'  {SWEEP_NAMES[n]}: {v}')
  cols = (f'{"phase":<20}' + (f'{"tljax s":>11}{"tljax compile s":>17}' if has_tljax else '')
          + ''.join(f'{SWEEP_NAMES[n] + " s":>11}' for n in peers)
          + (f'{"tljax/fastest peer":>20}' if has_tljax and peers else ''))
  lines += ['', cols, '-' * len(cols)]
  if d.get('prepare_s') is not None:
    lines.append(f'{"data prepare":<20}{d["prepare_s"]:>11.1f}  (tljax\'s folder loader, shared '
                 'by every framework; not in the totals)')
  rows = _sweep_rows(result)
  phases = [row for row, _ in rows if row not in ('start-up (imports)', 'other', 'total')]
  slower, ratios = [], {}
  for row, secs in rows:
    line = f'{row:<20}'
    if has_tljax:
      line += f'{_f(secs.get("tljax"), ".1f"):>11}{_f(_tljax_compile(fws["tljax"], row), ".1f"):>17}'
    line += ''.join(f'{_f(secs.get(n), ".1f"):>11}' for n in peers)
    best = min((secs[n] for n in peers if n in secs), default=None)
    if has_tljax and peers and row != 'other':  # the peers have next to nothing outside phases
      ratio = secs['tljax'] / best if best and 'tljax' in secs else None
      ratios[row] = ratio
      line += f'{_f(ratio, ".2f"):>20}'
      if ratio is not None and ratio > 1 and row in phases:
        slower.append(row)
    lines.append(line)
  lines.append('')
  lines += textwrap.wrap(
      'Wall seconds per phase, each framework in a fresh process, one after another. A case: '
      'its model on the pretrained weights with a new head, compiling (tljax: before '
      'pretraining), filling the prefix cache (tljax), training with checkpoints, evaluating on '
      'the test split, and (tljax) the summary written after it. total = start-up + every phase '
      '+ other (tljax: config, workdir and data checks, the final outputs); loading the data '
      'into memory is not counted.', 100)
  if ratios.get('total') is not None:
    verdict = 'met' if ratios['total'] <= SWEEP_TARGET and not slower else 'not met'
    lines.append(f'Target (whole sweep <= {SWEEP_TARGET}x the fastest peer, and neither '
                 f'pretraining nor a case slower than it): {verdict}; total '
                 f'{ratios["total"]:.2f}x' + (f'; slower: {", ".join(slower)}' if slower else ''))
  shares = {n: (fws[n].get('contention') or {}).get('other_cpu_share') for n in names}
  if any(v is not None for v in shares.values()):
    lines.append('Other processes took ' + ', '.join(
        f'{_f(None if v is None else 100 * v, ".0f")} %' + f' of the CPU during {SWEEP_NAMES[n]}'
        for n, v in shares.items()) + (' (timings disturbed)' if any(
            v is not None and v > 0.05 for v in shares.values()) else ''))
  for n, r in fws.items():
    note = r.get('note') or ''
    if note:
      lines += textwrap.wrap(f'{SWEEP_NAMES[n]}: {note}', 100, initial_indent='  ',
                             subsequent_indent='    ')
  if has_tljax:
    tl = fws['tljax']
    parts = ('plan', 'run', 'outputs')
    lines += [''] + textwrap.wrap(
        'tljax per phase: plan = a case made and its steps handed to the compile pool before '
        'pretraining (train, eval, prefix and suffix steps; compile_workers=1: compiled there, '
        'with the memory check); run = pretraining or the case (prefix-cache '
        'fill, training, checkpoints, evaluation); outputs = the summary, CSVs and figures '
        'written after it; compiling = lowering + XLA compilation within the phase. other: run = '
        'config, workdir and data checks, outputs = the final summary.', 100)
    lines.append(f'{"phase":<20}' + ''.join(f'{p:>11}' for p in ('plan s', 'run s', 'outputs s'))
                 + f'{"compiling s":>14}')
    for row in phases + ['other']:
      if row == 'other':
        got = tl.get('other_parts', {})
        vals, comp = [None, got.get('setup'), got.get('outputs')], tl.get('other_compile_s')
      elif row in tl['phases']:
        got = tl['phases'][row].get('parts', {})
        vals, comp = [got.get(p) for p in parts], tl['phases'][row].get('compile_s')
      else:
        continue
      lines.append(f'{row:<20}' + ''.join(f'{_f(v, ".1f"):>11}' for v in vals)
                   + f'{_f(comp, ".1f"):>14}')
    lines += _pool_lines(tl.get('compile_pool'))
  lines += ['', f'{"test accuracy":<20}' + ''.join(f'{SWEEP_NAMES[n]:>11}' for n in names)]
  for row in phases:
    label = row + (' (source)' if row == 'pretraining' else '')
    lines.append(f'{label:<20}' + ''.join(
        f'{_f(fws[n]["phases"].get(row, {}).get("test_accuracy"), ".4f"):>11}' for n in names))
  return '\n'.join(lines)


def _pool_lines(c):
  """What tljax's compile pool did (the summary's `compile`), beside the phases."""
  if not c:
    return []
  return textwrap.wrap(
      f'tljax compile pool: {len(c["programs"])} programs on {c["workers"]} threads, '
      f'{c["total_s"]:.1f} s of compiling in a compile wall of {c["wall_s"]:.1f} s, '
      f'{c["overlap_s"]:.1f} s of it overlapping pretraining, training and outputs (the pool\'s '
      'compiles are in no phase\'s compiling column; total\'s includes them).', 100)
