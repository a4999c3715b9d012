"""The op profiler: real operations of the compiled step, mapped to the JAX ops they came from."""

from benchmarks import profile as op_profile


def test_op_names_reads_shapes_and_jax_ops():
  hlo = ('  %fusion.3 = f32[64,32,32,32]{3,2,1,0} fusion(%p0, %p1), kind=kLoop, '
         'metadata={op_name="jit(train_step)/conv2d/conv_general_dilated"}\n'
         '  ROOT %tuple = (f32[2]{0}) tuple(%a)\n')
  names = op_profile.op_names(hlo)
  assert names['fusion.3'] == ('f32[64,32,32,32]', 'jit(train_step)/conv2d/conv_general_dilated')
  assert names['tuple'] == ('(f32[2]', '')


def test_profile_of_a_small_cnn_case(capsys):
  op_profile.main(['--model=small_cnn', '--case=9', '--steps=2', '--top=8'])
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith('small_cnn case 9, batch 64:') and 'ms/step wall' in out[0]
  blank = out.index('')
  families = out[2:blank]
  assert families and all('(' in f for f in families)
  rows = out[blank + 2:]
  assert len(rows) == 8
  times = [float(r.split()[0]) for r in rows]
  assert all(t > 0 for t in times) and times == sorted(times, reverse=True)
  # Rows name the model's layers through the HLO metadata.
  assert any('SmallCNN' in r for r in rows)


def test_family_of_operations():
  assert op_profile.family('fusion.1', 'transpose(jvp(EfficientNet))/block2a_dwconv/slice') == (
      'depthwise conv', 'backward')
  assert op_profile.family('transpose_copy_fusion.9', '') == ('layout transpose', 'other')
  assert op_profile.family('f', 'jvp(SmallCNN)/conv2d/conv_general_dilated') == (
      'convolution', 'forward')
