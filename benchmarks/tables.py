"""The benchmarks' tables as text: the step benchmark's, the prefix cache's, the sweep's."""

# Ratio of (step time fraction) to (FLOP fraction) the frozen cases should stay within.
TRACKING_TARGET = 1.3


def _f(v, fmt):
  return '-' if v is None else format(v, fmt)


def step_tables(result):
  """The speed table and the time-vs-FLOPs table of one model, as text."""
  peers = list(result['peers'])
  head = (f'{result["model"]}: batch {result["batch_size"]}, {result["image_size"]}x'
          f'{result["image_size"]}x{result["channels"]}, {result["counting"]!r} counting; '
          f'input pipeline {result["input"]["examples_per_s"]:.0f} ex/s '
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
        f'{result["input"]["examples_per_s"]:>12.0f}'
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
