"""Bilinear resizing in numpy, bit for bit tf.image.resize(method='bilinear') (no antialias)."""

import numpy as np


def _taps(n_in, n_out):
  """(lower, upper, weight of upper) per output row: TensorFlow's half-pixel-centre sampling,
  in float32 as its kernel computes it."""
  scale = np.float32(n_in) / np.float32(n_out)
  x = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(x)
  lower = np.maximum(floor, 0).astype(np.intp)
  upper = np.minimum(np.ceil(x), n_in - 1).astype(np.intp)
  return lower, upper, (x - floor).astype(np.float32)


def bilinear(images, height, width):
  """float32 (N, H, W, C) `images` resized to (N, height, width, C) as TensorFlow's
  ResizeBilinear with half-pixel centres does (tf.image.resize's 'bilinear', antialias off):
  the same float32 operations in the same order, so the same bits."""
  x = np.asarray(images, np.float32)
  y0, y1, wy = _taps(x.shape[1], height)
  x0, x1, wx = _taps(x.shape[2], width)
  wx, wy = wx[None, None, :, None], wy[None, :, None, None]
  rows0, rows1 = x[:, y0], x[:, y1]
  top = rows0[:, :, x0] + (rows0[:, :, x1] - rows0[:, :, x0]) * wx
  bottom = rows1[:, :, x0] + (rows1[:, :, x1] - rows1[:, :, x0]) * wx
  return top + (bottom - top) * wy
