"""Results of several methods x seeds as a table, a CSV file and a figure.

The table follows the paper's Table 1: one row per method, each cell the mean
and sample standard deviation over seeds of a metric of the final evaluation on
the full validation split, the best per column in bold. A metric that no seed of
a method reports (the ELBO of vqvae and fsq, which have no analytic q(z|x)) is
not applicable and shown as '–'.

Everything here is host-side numpy; matplotlib is imported only by `plot`.
"""

from collections.abc import Mapping, Sequence
import csv
import dataclasses
import io
import json
import math
import numbers
import os
import pathlib
from typing import NamedTuple

import numpy as np

from daps_jax import errors
from daps_jax import metrics

NOT_APPLICABLE = '–'


@dataclasses.dataclass(frozen=True)
class Run:
  """One finished training run.

  Attributes:
    method: method name, e.g. 'daps', 'gumbel_na', 'vqvae'.
    seed: the run's seed.
    final: metrics of the final evaluation on the full validation split.
    curve: every record of the run's metrics.jsonl, in order:
      {'step': int, <name>: float, ...}.
    code_counts: [L, V] code histogram of the final evaluation, or None.
    bits: bits per input of the latent code, L * log2(V).
  """
  method: str
  seed: int
  final: dict[str, float]
  curve: list[dict]
  code_counts: np.ndarray | None
  bits: float


class Column(NamedTuple):
  """A table column: metric key, header text, direction and number format."""
  key: str
  header: str
  higher_is_better: bool
  fmt: str


COLUMNS = (
    Column('eval/beta_elbo', 'β-ELBO', True, '.2f'),
    Column('eval/elbo', 'ELBO', True, '.2f'),
    Column('eval/psnr', 'PSNR (dB)', True, '.2f'),
    Column('eval/psnr_batch', 'PSNR per batch (authors)', True, '.2f'),
    Column('codebook/used_fraction', 'codebook used', True, '.3f'),
    Column('codebook/perplexity', 'perplexity', True, '.1f'),
    Column('eval/fid', 'FID', False, '.2f'),
    # The code prior's (compare --priors): held-out code NLL, its baseline, sample quality.
    Column('prior/bits_per_input', 'prior bits/input', False, '.2f'),
    Column('prior/bits_per_token', 'prior bits/token', False, '.3f'),
    Column('prior/independent_bits_per_token', 'independent bits/token', False, '.3f'),
    Column('prior/gfid', 'gFID', False, '.2f'),
)
# Columns shown only when at least one row has them; the others are always shown.
_OPTIONAL = frozenset({'eval/fid', 'eval/psnr_batch', 'prior/bits_per_input',
                       'prior/bits_per_token', 'prior/independent_bits_per_token',
                       'prior/gfid'})


@dataclasses.dataclass(frozen=True)
class Row:
  """Summary of one method over its seeds.

  Attributes:
    method: method name.
    num_seeds: number of runs of the method.
    bits: bits per input of the latent code.
    mean: metric key -> mean over the seeds that report it; a metric no seed
      reports is absent.
    std: metric key -> sample standard deviation (ddof=1; 0.0 with one seed).
  """
  method: str
  num_seeds: int
  bits: float
  mean: dict[str, float]
  std: dict[str, float]


def _is_number(value) -> bool:
  """True for real numbers (NaN included); False for bools, None and strings."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _group(runs: Sequence[Run], methods: Sequence[str] | None) -> dict[str, list[Run]]:
  """Runs by method, in the order of `methods` (else of first appearance).

  With `methods`, runs of other methods are dropped and methods without runs skipped.
  """
  groups = {}
  for run in runs:
    groups.setdefault(run.method, []).append(run)
  order = groups if methods is None else [m for m in methods if m in groups]
  return {method: groups[method] for method in order}


def summarise(runs: Sequence[Run], methods: Sequence[str] | None = None) -> list[Row]:
  """Mean and sample std over seeds of every numeric final metric, per method.

  Args:
    runs: the runs, any order.
    methods: the methods to report, in this order; default all, in order of
      first appearance.

  Returns:
    One `Row` per method.

  Raises:
    ValueError: if the runs of a method disagree on `bits`.
  """
  rows = []
  for method, group in _group(runs, methods).items():
    bits = {run.bits for run in group}
    if len(bits) > 1:
      raise ValueError(f'Runs of {method!r} disagree on bits per input: {sorted(bits)}.')
    values = {}
    for run in group:
      for key, value in run.final.items():
        if _is_number(value):
          values.setdefault(key, []).append(float(value))
    mean = {key: float(np.mean(v)) for key, v in values.items()}
    std = {key: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for key, v in values.items()}
    rows.append(Row(method, len(group), group[0].bits, mean, std))
  return rows


def best(rows: Sequence[Row]) -> dict[str, str]:
  """Metric key -> method with the best mean, for each column of `COLUMNS`.

  Absent and non-finite means are ignored; a column without any finite mean is
  left out. Ties go to the earlier row.
  """
  winners = {}
  for column in COLUMNS:
    candidates = [(row.mean[column.key], row.method) for row in rows
                  if math.isfinite(row.mean.get(column.key, math.nan))]
    if candidates:
      pick = max if column.higher_is_better else min
      winners[column.key] = pick(candidates, key=lambda candidate: candidate[0])[1]
  return winners


def _columns(rows: Sequence[Row]) -> list[Column]:
  """The table's columns: all of `COLUMNS` but the optional ones no row has."""
  return [c for c in COLUMNS
          if c.key not in _OPTIONAL or any(c.key in row.mean for row in rows)]


def _format_bits(bits: float) -> str:
  return f'{bits:.0f}' if float(bits).is_integer() else f'{bits:.1f}'


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
  """Markdown table lines; the first column left-aligned, the others right-aligned."""
  align = [':--'] + ['--:'] * (len(header) - 1)
  return ['| ' + ' | '.join(cells) + ' |' for cells in [header, align, *body]]


def markdown(rows: Sequence[Row], meta: Mapping[str, str],
             reference: Mapping[str, Mapping[str, float]] | None = None) -> str:
  """The results as Markdown, in the format of the paper's Table 1.

  Args:
    rows: from `summarise`.
    meta: lines of context printed above the table as '- key: value', in order
      (e.g. data, steps, batch, machine, command, date).
    reference: optional method -> {metric key: value}, e.g. the paper's numbers;
      printed as a second table for the methods in `rows`.

  Returns:
    The document, ending with a newline.
  """
  columns = _columns(rows)
  winners = best(rows)
  body = []
  for row in rows:
    cells = [row.method, str(row.num_seeds), _format_bits(row.bits)]
    for column in columns:
      if column.key not in row.mean:
        cells.append(NOT_APPLICABLE)
        continue
      cell = (f'{row.mean[column.key]:{column.fmt}} ± '
              f'{row.std[column.key]:{column.fmt}}')
      cells.append(f'**{cell}**' if winners.get(column.key) == row.method else cell)
    body.append(cells)
  lines = ['# Results', '']
  lines += [f'- {key}: {value}' for key, value in meta.items()]
  lines += ['']
  lines += markdown_table(['method', 'seeds', 'bits'] + [c.header for c in columns], body)

  cited = [row.method for row in rows if reference and row.method in reference]
  if cited:
    ref_columns = [c for c in COLUMNS if any(c.key in reference[m] for m in cited)]
    ref_body = [[method] + [f'{reference[method][c.key]:{c.fmt}}'
                            if c.key in reference[method] else NOT_APPLICABLE
                            for c in ref_columns]
                for method in cited]
    lines += ['', '## Paper (Table 1)', '']
    lines += markdown_table(['method'] + [c.header for c in ref_columns], ref_body)

  lines += ['', 'Legend: mean ± sample standard deviation over seeds (0 with one seed); '
            '**bold**: best in its column (higher is better, except FID); '
            f'{NOT_APPLICABLE}: not applicable (no analytic q(z|x), so no ELBO); '
            'bits: bits per input of the latent code, L log2 V.']
  return '\n'.join(lines) + '\n'


def csv_text(rows: Sequence[Row]) -> str:
  """The results as CSV: method, num_seeds, bits, then <key>_mean, <key>_std.

  There is a pair of columns for each metric of `COLUMNS` that some row has.
  Numbers are written in full precision (the repr of the float); a metric that
  does not apply to a method is an empty cell.
  """
  keys = [c.key for c in COLUMNS if any(c.key in row.mean for row in rows)]
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['method', 'num_seeds', 'bits']
                  + [f'{key}_{stat}' for key in keys for stat in ('mean', 'std')])
  for row in rows:
    cells = [row.method, row.num_seeds, repr(float(row.bits))]
    for key in keys:
      cells += ([repr(row.mean[key]), repr(row.std[key])] if key in row.mean else ['', ''])
    writer.writerow(cells)
  return out.getvalue()


def _series(runs: Sequence[Run], key: str) -> dict[int, list[float]]:
  """Step -> values of `key` over the runs' curves, one per run that has the step.

  Records without a numeric `key` are skipped; where a run logged a step twice
  (a resumed run appends to its metrics.jsonl), its last value counts.
  """
  by_step = {}
  for run in runs:
    values = {int(r['step']): float(r[key]) for r in run.curve
              if 'step' in r and _is_number(r.get(key))}
    for step, value in values.items():
      by_step.setdefault(step, []).append(value)
  return dict(sorted(by_step.items()))


def _plot_curves(ax, groups: Mapping[str, list[Run]], colours: Mapping[str, str], key: str,
                 title: str, ylabel: str,
                 sec_per_step: Mapping[str, float] | None = None) -> None:
  """Mean over seeds of `key` vs step per method, shaded min-max with > 1 seed.

  With `sec_per_step` the x axis is seconds (step x the method's seconds per step, on a log
  axis), and methods without a time are left out.
  """
  for method, group in groups.items():
    series = _series(group, key)
    if not series or (sec_per_step is not None and method not in sec_per_step):
      continue
    x = np.array(list(series), np.float64)
    if sec_per_step is not None:
      x *= sec_per_step[method]
    values = list(series.values())
    ax.plot(x, [np.mean(v) for v in values], color=colours[method], label=method,
            marker='o' if len(x) <= 20 else None, markersize=3)
    if len(group) > 1:
      ax.fill_between(x, [min(v) for v in values], [max(v) for v in values],
                      color=colours[method], alpha=0.2, linewidth=0)
  if sec_per_step is None:
    _finish(ax, title, 'step', ylabel)
  else:
    _finish(ax, title, 'seconds (idle seconds per step x step)', ylabel)
    if ax.lines:
      ax.set_xscale('log')


def _plot_codebook(ax, groups: Mapping[str, list[Run]], colours: Mapping[str, str]) -> None:
  """Rank-frequency of the final codes per method, pooled over positions and seeds."""
  for method, group in groups.items():
    pooled = [run.code_counts.sum(0) for run in group if run.code_counts is not None]
    if not pooled or sum(counts.sum() for counts in pooled) == 0:
      continue
    # The used fraction of each seed, averaged over seeds.
    used = np.mean([metrics.codebook_usage(counts[None])['codebook/used_fraction']
                    for counts in pooled])
    freq = np.sort(np.sum(pooled, axis=0))[::-1].astype(np.float64)
    freq /= freq.sum()
    ranks = np.arange(1, freq.size + 1)
    nonzero = freq > 0  # Zeros have no place on a log axis.
    ax.plot(ranks[nonzero], freq[nonzero], color=colours[method],
            label=f'{method} (used {used:.3f})')
  ax.set_yscale('log')
  _finish(ax, '(c) codebook usage (rank-frequency)', 'code rank', 'frequency')


def _finish(ax, title: str, xlabel: str, ylabel: str) -> None:
  """Title, labels and a legend, or a 'no data' note on an empty panel."""
  ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if ax.lines:
    ax.legend(fontsize='small')
  else:
    ax.text(0.5, 0.5, 'no data', ha='center', va='center', transform=ax.transAxes)


def step_times(path: str | os.PathLike[str], config: str, batch_size: int,
               methods: Sequence[str]) -> dict[str, float]:
  """Method -> seconds per step, from a `python -m bench.train_step` JSON file.

  The file's records for dataset config `config` (e.g. 'fashion_mnist') at global batch
  `batch_size`; a method timed more than once gets the median. Methods the file does not
  time are left out (the equal-compute panel leaves them out too).

  Raises:
    errors.UserError: the file is unreadable, or holds no usable record for these methods.
  """
  try:
    with open(path, encoding='utf-8') as f:
      records = json.load(f)['records']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise errors.UserError(f'--step_times {path}: not a bench.train_step JSON file ({e}); '
                           'write one with python -m bench.train_step --output=FILE.') from e
  times = {}
  for r in records:
    if (r.get('config') == config and r.get('method') in methods
        and r.get('batch_size') == batch_size and 'sec_per_step' in r):
      times.setdefault(r['method'], []).append(float(r['sec_per_step']))
  if not times:
    raise errors.UserError(
        f'--step_times {path}: no record of config {config} at batch {batch_size} for '
        f'{", ".join(methods)}; time them on an idle machine with python -m bench.train_step '
        f'--configs={config} --methods={",".join(methods)} --batch_size={batch_size} '
        f'--output={path}.')
  return {m: float(np.median(v)) for m, v in times.items()}


def plot(path: str | os.PathLike[str], runs: Sequence[Run],
         methods: Sequence[str] | None = None,
         sec_per_step: Mapping[str, float] | None = None) -> None:
  """Writes a PNG with three panels (four with `sec_per_step`), one colour per method.

  (a) held-out PSNR vs step, from the curves' eval records; (b) training
  'decoder/log_p' vs step; (c) the rank-frequency histogram of the final codes,
  pooled over positions and seeds, on a log axis; (d) with `sec_per_step`,
  held-out PSNR vs seconds, the equal-compute view (a method's steps cost
  different times: DAPS draws K samples per input). Curves are means over seeds,
  shaded between the seeds' min and max. A method without the data for a panel
  is left out of it.

  Args:
    path: the PNG file; its parent directory is created if needed.
    runs: the runs, any order.
    methods: the methods to plot, in this order; default all.
    sec_per_step: method -> seconds per training step, measured on an idle machine
      (the runs' own rates depend on the load they ran under).
  """
  from matplotlib import figure  # pylint: disable=g-import-not-at-top

  groups = _group(runs, methods)
  colours = {method: f'C{i % 10}' for i, method in enumerate(groups)}
  # A bare Figure renders with Agg and leaves pyplot's global state alone.
  panels = 3 if sec_per_step is None else 4
  fig = figure.Figure(figsize=(5 * panels, 4.2), layout='constrained')
  axes = fig.subplots(1, panels)
  _plot_curves(axes[0], groups, colours, 'eval/psnr', '(a) held-out PSNR', 'PSNR (dB)')
  _plot_curves(axes[1], groups, colours, 'decoder/log_p', '(b) training log p(x|z)',
               'decoder/log_p')
  _plot_codebook(axes[2], groups, colours)
  if sec_per_step is not None:
    _plot_curves(axes[3], groups, colours, 'eval/psnr', '(d) held-out PSNR at equal compute',
                 'PSNR (dB)', sec_per_step)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, format='png', dpi=120)


def write(directory: str | os.PathLike[str], runs: Sequence[Run], meta: Mapping[str, str],
          methods: Sequence[str] | None = None,
          reference: Mapping[str, Mapping[str, float]] | None = None,
          sec_per_step: Mapping[str, float] | None = None) -> dict[str, str]:
  """Writes results.md, results.csv and results.png to `directory`.

  Args:
    directory: created if needed.
    runs: the runs, any order.
    meta: context lines for the Markdown, see `markdown`.
    methods: the methods to report, in this order; default all.
    reference: optional paper numbers, see `markdown`.
    sec_per_step: optional idle seconds per step by method, see `plot`.

  Returns:
    The paths written, by kind: 'md', 'csv' and 'png'.
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  rows = summarise(runs, methods)
  paths = {kind: str(directory / f'results.{kind}') for kind in ('md', 'csv', 'png')}
  pathlib.Path(paths['md']).write_text(markdown(rows, meta, reference), encoding='utf-8')
  pathlib.Path(paths['csv']).write_text(csv_text(rows), encoding='utf-8')
  plot(paths['png'], runs, methods, sec_per_step)
  return paths
