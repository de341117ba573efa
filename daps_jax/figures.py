"""Pictures of codebook usage and of motion reconstructions, rendered to uint8 images.

Shape legend: L latent positions, V codebook size, H, W image height and width.
The input is the [L, V] histogram of codes over a validation split, e.g. the
summed `metrics.code_counts`; the output is a uint8 RGB [H, W, 3] image for
TensorBoard (`writers.MetricWriter.write_images`) or a PNG (`images.save_png`).

`motion_figure` draws validation windows [N, T, C] of motion features, the
reconstruction over the truth.

Everything is host-side numpy; matplotlib is imported only by the figure
functions and renders with Agg on a bare `Figure`, so pyplot's global state is
untouched.
"""

import numpy as np

from daps_jax import metrics

FIGSIZE = (10.0, 4.0)  # inches; at DPI this gives a 1000 x 400 pixel image.
DPI = 100
UNUSED_COLOUR = 'lightgrey'  # unused codes, in both panels.
BOUNDARY_COLOUR = 'tab:red'  # the line after the last used code, in both panels.
CURVE_COLOUR = 'tab:blue'
HEATMAP_CMAP = 'viridis'
MIN_DECADES = 2.0  # the least range of panel (a)'s log axis, in powers of 10.


def _check_counts(counts) -> np.ndarray:
  """Validates an [L, V] histogram and returns it as float64.

  Raises:
    ValueError: if `counts` is not a non-empty 2-D array of finite, non-negative
      real numbers.
  """
  counts = np.asarray(counts)
  if counts.ndim != 2:
    raise ValueError(f'counts must be an [L, V] histogram, got shape {counts.shape}.')
  if counts.size == 0:
    raise ValueError(f'counts must have at least one position and one code, got shape '
                     f'{counts.shape}.')
  if not (np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating)
          or counts.dtype == np.bool_):
    raise ValueError(f'counts must be integer counts, got dtype {counts.dtype}.')
  counts = counts.astype(np.float64)
  if not np.all(np.isfinite(counts)):
    raise ValueError('counts must be finite, got NaN or infinity.')
  if np.any(counts < 0):
    raise ValueError(f'counts must be non-negative, got a minimum of {counts.min():g}.')
  return counts


def _rank_order(pooled: np.ndarray) -> np.ndarray:
  """[V] codes sorted by decreasing pooled count, ties by increasing code index."""
  return np.argsort(-pooled, kind='stable')


def _log_limits(low: float, high: float) -> tuple[float, float]:
  """Log-axis limits around [low, high], 0 < low <= high, spanning >= MIN_DECADES.

  A narrow range (e.g. a nearly uniform codebook) would otherwise be labelled
  with crowded minor ticks.
  """
  margin = max(0.1, (MIN_DECADES - float(np.log10(high / low))) / 2.0)
  return low / 10.0**margin, high * 10.0**margin


def _plot_rank_frequency(ax, pooled: np.ndarray, order: np.ndarray, num_positions: int) -> None:
  """Panel (a): pooled frequencies by rank on a log axis, the unused tail shaded.

  Args:
    ax: the matplotlib axes.
    pooled: [V] counts pooled over positions, not all zero.
    order: [V] codes by rank, from `_rank_order(pooled)`.
    num_positions: L, for the title.
  """
  vocab = pooled.size
  freq = pooled[order] / pooled.sum()
  num_used = int(np.count_nonzero(pooled))
  usage = metrics.codebook_usage(pooled[None])
  used_fraction, perplexity = usage['codebook/used_fraction'], usage['codebook/perplexity']
  ranks = np.arange(1, vocab + 1)
  # Zeros have no place on a log axis: the curve stops at the last used code.
  ax.plot(ranks[:num_used], freq[:num_used], color=CURVE_COLOUR,
          marker='o' if num_used <= 32 else None, markersize=3, clip_on=False,
          label=f'used {num_used}/{vocab} = {used_fraction:.3f}')
  ax.axhline(1.0 / vocab, color='black', linestyle=':', linewidth=1, zorder=1,
             label=f'uniform 1/{vocab}')
  if num_used < vocab:
    ax.axvspan(num_used + 0.5, vocab + 0.5, color=UNUSED_COLOUR, linewidth=0,
               label=f'unused: {vocab - num_used} codes')
    ax.axvline(num_used + 0.5, color=BOUNDARY_COLOUR, linestyle='--', linewidth=1)
  # An empty marker gives the perplexity its own legend line.
  ax.plot([], [], ' ', label=f'perplexity {perplexity:.1f}')
  ax.set_yscale('log')
  ax.set_xlim(0.5, vocab + 0.5)
  ax.set_ylim(*_log_limits(min(freq[num_used - 1], 1.0 / vocab), max(freq[0], 1.0 / vocab)))
  ax.set_title(f'(a) code frequency pooled over positions (L={num_positions})',
               fontsize='medium')
  ax.set_xlabel('code rank')
  ax.set_ylabel('frequency')
  ax.legend(fontsize='small', loc='upper right', framealpha=0.9)


def _plot_heatmap(fig, ax, counts: np.ndarray, order: np.ndarray) -> None:
  """Panel (b): per-position frequencies, codes in the rank order of panel (a).

  Each position's counts are divided by its total, the number of inputs; zeros
  (and positions without counts) are drawn in `UNUSED_COLOUR`.

  Args:
    fig: the matplotlib figure, for the colour bar.
    ax: the matplotlib axes.
    counts: [L, V] float64 counts, not all zero.
    order: [V] codes by rank, from `_rank_order`.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  num_positions, vocab = counts.shape
  totals = counts.sum(1, keepdims=True)
  freq = np.divide(counts[:, order], totals, out=np.zeros_like(counts), where=totals > 0)
  positive = freq[freq > 0]
  vmin, vmax = float(positive.min()), float(positive.max())
  if vmin == vmax:  # LogNorm needs a range; one value is drawn at the top.
    vmin = vmax / 10.0
  cmap = matplotlib.colormaps[HEATMAP_CMAP].with_extremes(bad=UNUSED_COLOUR)
  image = ax.imshow(np.ma.masked_equal(freq, 0.0), cmap=cmap,
                    norm=colors.LogNorm(vmin=vmin, vmax=vmax), aspect='auto',
                    interpolation='nearest', extent=(0.5, vocab + 0.5, num_positions - 0.5, -0.5))
  num_used = int(np.count_nonzero(counts.sum(0)))
  if num_used < vocab:
    ax.axvline(num_used + 0.5, color=BOUNDARY_COLOUR, linestyle='--', linewidth=1)
  ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_title('(b) per-position usage (grey: unused at that position)', fontsize='medium')
  ax.set_xlabel('code rank (order of (a))')
  ax.set_ylabel('latent position')
  fig.colorbar(image, ax=ax, label='count / inputs')


MOTION_WINDOWS = 3  # windows shown, one row each
MOTION_FEATURES = 4  # features shown per window, the ones that move most


def _render(fig) -> np.ndarray:
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  canvas = backend_agg.FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # contiguous, owns its memory.


def motion_figure(originals: np.ndarray, reconstructions: np.ndarray | None,
                  feature_names: tuple[str, ...] | None = None, title: str = '') -> np.ndarray:
  """Feature curves of up to 3 windows: truth solid, reconstruction dashed (None:
  the windows alone, e.g. samples of a prior).

  One row per window and one panel per feature; the features are the 4 with the
  largest variance over time in the windows shown (the joints that move).

  Args:
    originals: [N, T, C] features on the [0, 1] scale (min-max normalised).
    reconstructions: [N, T, C], the same shape.
    feature_names: C names for the panel titles (default 'feature i').
    title: optional figure title, e.g. 'step 1000'.
  Returns:
    uint8 [H, W, 3] RGB image.
  """
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  if (reconstructions is not None and reconstructions.shape != originals.shape
      or originals.ndim != 3 or not len(originals)):
    raise ValueError(f'motion_figure needs two equal [N, T, C] arrays, N >= 1; got '
                     f'{originals.shape} and {reconstructions.shape}.')
  windows = min(len(originals), MOTION_WINDOWS)
  shown = originals[:windows]
  moving = np.argsort(-shown.var(1).mean(0), kind='stable')[:MOTION_FEATURES]
  names = feature_names or tuple(f'feature {i}' for i in range(originals.shape[-1]))
  fig = figure.Figure(figsize=(3.0 * len(moving), 2.2 * windows), dpi=DPI, layout='constrained')
  axes = np.asarray(fig.subplots(windows, len(moving), squeeze=False, sharex=True))
  frames = np.arange(originals.shape[1])
  for row in range(windows):
    for col, feature in enumerate(moving):
      ax = axes[row, col]
      ax.plot(frames, originals[row, :, feature], color='black', lw=1.2, label='truth')
      if reconstructions is not None:
        ax.plot(frames, reconstructions[row, :, feature], color=CURVE_COLOUR, lw=1.2, ls='--',
                label='reconstruction')
      ax.set_ylim(-0.05, 1.05)
      ax.set_title(f'window {row}: {names[feature]}', fontsize=8)
      ax.tick_params(labelsize=7)
  axes[-1, 0].set_xlabel('frame', fontsize=8)
  axes[0, 0].legend(fontsize=7)
  if title:
    fig.suptitle(title)
  return _render(fig)


def codebook_figure(counts: np.ndarray, title: str = '') -> np.ndarray:
  """Two panels on how a validation split used the codebook, as an RGB image.

  (a) The code frequencies pooled over positions in decreasing order (rank
  1..V) on a log axis, with the uniform frequency 1/V dotted, the unused codes'
  tail shaded grey, and the used fraction and perplexity of `metrics.codebook_usage` in
  the legend. (b) A heat map of the per-position frequencies (count / number of
  inputs), one row per latent position and the codes in the rank order of (a),
  on a logarithmic colour scale; zeros are grey. A dashed red line marks the
  end of the used codes in both panels.

  Args:
    counts: [L, V] non-negative integer code counts over a validation split,
      e.g. the sum of `metrics.code_counts` over its batches.
    title: optional title above both panels, e.g. 'step 1000'.

  Returns:
    uint8 [400, 1000, 3] RGB image; the same counts give the same pixels.

  Raises:
    ValueError: if `counts` is not 2-D, is empty, has negative or non-finite
      entries, or is all zero.
  """
  from matplotlib import figure  # pylint: disable=g-import-not-at-top

  counts = _check_counts(counts)
  pooled = counts.sum(0)
  if not pooled.any():
    raise ValueError(f'counts of shape {counts.shape} are all zero: no codes were counted, so '
                     'there is no usage to plot.')
  order = _rank_order(pooled)
  fig = figure.Figure(figsize=FIGSIZE, dpi=DPI, layout='constrained')
  ax_rank, ax_heat = fig.subplots(1, 2, width_ratios=(1.0, 1.25))
  _plot_rank_frequency(ax_rank, pooled, order, counts.shape[0])
  _plot_heatmap(fig, ax_heat, counts, order)
  if title:
    fig.suptitle(title)
  return _render(fig)
