"""Tests of daps_jax.report."""

import csv
import io
import json
import math

import numpy as np
import pytest

from daps_jax import errors
from daps_jax import report

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def make_run(method: str, seed: int, psnr: float, beta_elbo: float | None = None,
             fid: float | None = None, curve: list[dict] | None = None,
             code_counts: np.ndarray | None = None, bits: float = 400.0) -> report.Run:
  """A run whose final metrics have `psnr`, and `beta_elbo`/ELBO and `fid` if given."""
  final = {'eval/psnr': psnr, 'codebook/used_fraction': 0.5, 'codebook/perplexity': 100.0,
           'eval/fid_protocol': 'none', 'eval/psnr_mean_image': 10.0}
  if beta_elbo is not None:
    final['eval/beta_elbo'] = beta_elbo
    final['eval/elbo'] = beta_elbo - 1.0
  if fid is not None:
    final['eval/fid'] = fid
  return report.Run(method, seed, final, curve or [], code_counts, bits)


def three_methods(fid: bool = False) -> list[report.Run]:
  """daps (2 seeds), gumbel_na (1 seed), vqvae (2 seeds, no ELBO); daps has the best PSNR."""
  return [
      make_run('daps', 0, 10.0, -100.0, fid=30.0 if fid else None),
      make_run('vqvae', 0, 9.0),
      make_run('daps', 1, 12.0, -102.0),
      make_run('gumbel_na', 0, 8.0, -90.0, fid=20.0 if fid else None),
      make_run('vqvae', 1, 9.5),
  ]


def table_lines(text: str) -> list[list[str]]:
  """Cells of the first Markdown table in `text`, header first, alignment row dropped."""
  lines = text.split('\n')
  start = next(i for i, line in enumerate(lines) if line.startswith('|'))
  rows = []
  for line in lines[start:]:
    if not line.startswith('|'):
      break
    rows.append([cell.strip() for cell in line.strip('|').split('|')])
  return [rows[0]] + rows[2:]


def column(text: str, header: str) -> dict[str, str]:
  """Method -> cell of the column `header` of the first table."""
  header_cells, *body = table_lines(text)
  index = header_cells.index(header)
  return {cells[0]: cells[index] for cells in body}


# --- summarise, best -----------------------------------------------------------


def test_summarise_mean_and_sample_std():
  rows = {row.method: row for row in report.summarise(three_methods())}
  daps = rows['daps']
  assert (daps.num_seeds, daps.bits) == (2, 400.0)
  assert daps.mean['eval/psnr'] == 11.0
  assert daps.std['eval/psnr'] == pytest.approx(math.sqrt(2.0), rel=1e-12)
  assert daps.mean['eval/beta_elbo'] == -101.0
  assert daps.std['eval/beta_elbo'] == pytest.approx(math.sqrt(2.0), rel=1e-12)
  assert rows['gumbel_na'].num_seeds == 1
  assert rows['gumbel_na'].std['eval/psnr'] == 0.0
  assert 'eval/fid_protocol' not in daps.mean  # Not numeric.


def test_summarise_metric_absent_for_all_seeds_stays_absent():
  vqvae = {row.method: row for row in report.summarise(three_methods())}['vqvae']
  assert 'eval/elbo' not in vqvae.mean and 'eval/elbo' not in vqvae.std
  assert 'eval/beta_elbo' not in vqvae.mean
  assert vqvae.mean['eval/psnr'] == 9.25


def test_summarise_uses_only_the_seeds_that_have_a_metric():
  runs = [make_run('daps', 0, 10.0, fid=30.0), make_run('daps', 1, 12.0)]
  row, = report.summarise(runs)
  assert (row.mean['eval/fid'], row.std['eval/fid']) == (30.0, 0.0)


def test_summarise_method_order():
  runs = three_methods()
  assert [r.method for r in report.summarise(runs)] == ['daps', 'vqvae', 'gumbel_na']
  rows = report.summarise(runs, methods=['gumbel_na', 'fsq', 'daps'])
  assert [r.method for r in rows] == ['gumbel_na', 'daps']  # fsq has no runs; vqvae not asked.


def test_summarise_rejects_disagreeing_bits():
  with pytest.raises(ValueError, match='bits'):
    report.summarise([make_run('daps', 0, 10.0), make_run('daps', 1, 10.0, bits=200.0)])


def test_best_respects_direction_and_ignores_absent():
  winners = report.best(report.summarise(three_methods(fid=True)))
  assert winners['eval/psnr'] == 'daps'  # Max of 11, 9.25, 8.
  assert winners['eval/beta_elbo'] == 'gumbel_na'  # Max of -101, -90; vqvae has none.
  assert winners['eval/fid'] == 'gumbel_na'  # Min of 30, 20; vqvae has none.
  assert 'eval/fid' not in report.best(report.summarise(three_methods()))


def test_best_ignores_nan():
  runs = [make_run('daps', 0, math.nan), make_run('vqvae', 0, 5.0)]
  assert report.best(report.summarise(runs))['eval/psnr'] == 'vqvae'


# --- markdown, csv ---------------------------------------------------------------


META = {'data': 'mnist', 'steps': '2000', 'command': 'python -m daps_jax.compare'}


def test_markdown_meta_lines_in_order():
  text = report.markdown(report.summarise(three_methods()), META)
  lines = text.split('\n')
  indices = [lines.index(f'- {key}: {value}') for key, value in META.items()]
  assert indices == sorted(indices)
  assert lines[0].startswith('# ')
  assert text.endswith('\n')


def test_markdown_cells_bold_and_not_applicable():
  text = report.markdown(report.summarise(three_methods()), META)
  psnr = column(text, 'PSNR (dB)')
  assert psnr['daps'] == '**11.00 ± 1.41**'
  assert psnr['vqvae'] == '9.25 ± 0.35'
  assert sum(cell.startswith('**') for cell in psnr.values()) == 1
  assert column(text, 'β-ELBO')['vqvae'] == '–'
  assert column(text, 'ELBO')['vqvae'] == '–'
  assert column(text, 'seeds') == {'daps': '2', 'vqvae': '2', 'gumbel_na': '1'}
  assert column(text, 'bits')['daps'] == '400'
  assert text.rstrip().split('\n')[-1].startswith('Legend: mean ± sample standard deviation')


def test_markdown_fid_column_only_when_present():
  without = report.markdown(report.summarise(three_methods()), META)
  assert 'FID' not in table_lines(without)[0]
  with_fid = report.markdown(report.summarise(three_methods(fid=True)), META)
  fid = column(with_fid, 'FID')
  assert fid == {'daps': '30.00 ± 0.00', 'vqvae': '–', 'gumbel_na': '**20.00 ± 0.00**'}


def test_markdown_keeps_other_columns_when_not_applicable_to_all():
  text = report.markdown(report.summarise([make_run('vqvae', 0, 9.0)]), META)
  assert column(text, 'ELBO') == {'vqvae': '–'}
  assert column(text, 'β-ELBO') == {'vqvae': '–'}


def test_markdown_reference_table_only_when_given():
  rows = report.summarise(three_methods())
  assert 'Paper (Table 1)' not in report.markdown(rows, META)
  reference = {'daps': {'eval/psnr': 18.23}, 'vqvae': {'eval/psnr': 17.5}, 'fsq': {}}
  text = report.markdown(rows, META, reference)
  assert 'Paper (Table 1)' in text
  paper = text.split('Paper (Table 1)')[1]
  assert table_lines(paper) == [['method', 'PSNR (dB)'], ['daps', '18.23'], ['vqvae', '17.50']]


def test_csv_round_trip():
  rows = report.summarise(three_methods(fid=True) + [make_run('fsq', 0, 1.0 / 3.0)])
  records = list(csv.DictReader(io.StringIO(report.csv_text(rows))))
  assert [r['method'] for r in records] == ['daps', 'vqvae', 'gumbel_na', 'fsq']
  for row, record in zip(rows, records):
    assert int(record['num_seeds']) == row.num_seeds
    assert float(record['bits']) == row.bits
    for key in ('eval/beta_elbo', 'eval/elbo', 'eval/psnr', 'codebook/used_fraction',
                'codebook/perplexity', 'eval/fid'):
      if key in row.mean:
        assert float(record[f'{key}_mean']) == row.mean[key]
        assert float(record[f'{key}_std']) == row.std[key]
      else:
        assert record[f'{key}_mean'] == record[f'{key}_std'] == ''
  assert records[0]['eval/psnr_std'] == repr(math.sqrt(2.0))  # Full precision.
  assert 'eval/psnr_mean_image_mean' not in records[0]  # Only the table's metrics.


def test_csv_leaves_out_metrics_no_row_has():
  header = report.csv_text(report.summarise(three_methods())).split('\n')[0].split(',')
  assert header[:3] == ['method', 'num_seeds', 'bits']
  assert 'eval/fid_mean' not in header and 'eval/psnr_mean' in header


# --- plot, write -----------------------------------------------------------------


def curve(offset: float) -> list[dict]:
  """Training records every step, eval records every other step; step 6 re-logged on resume."""
  records = []
  for step in range(1, 7):
    records.append({'step': step, 'loss/decoder': 1.0, 'decoder/log_p': -100.0 + step + offset,
                    'perf/steps_per_sec': 10.0})
    if step % 2 == 0:
      records.append({'step': step, 'eval/psnr': 10.0 + step + offset})
  records.append({'step': 6, 'eval/psnr': 16.5 + offset})
  records.append({'step': 4, 'eval/psnr': None})  # A non-finite value is written as null.
  return records


def test_write_files_and_robustness(tmp_path):
  rng = np.random.default_rng(0)
  runs = [
      make_run('daps', 0, 10.0, -100.0, curve=curve(0.0),
               code_counts=rng.integers(0, 5, size=(4, 16))),
      make_run('daps', 1, 12.0, -102.0, curve=curve(1.0), code_counts=None),
      make_run('vqvae', 0, 9.0, curve=[{'step': 1, 'loss/decoder': 1.0}],
               code_counts=np.zeros((4, 16), np.int64)),
      make_run('fsq', 0, 9.0),  # No curve and no counts at all.
  ]
  directory = tmp_path / 'new' / 'out'
  paths = report.write(directory, runs, META, reference={'daps': {'eval/psnr': 18.23}})
  assert set(paths) == {'md', 'csv', 'png'}
  for kind, path in paths.items():
    assert path == str(directory / f'results.{kind}')
  assert 'Paper (Table 1)' in open(paths['md'], encoding='utf-8').read()
  assert len(list(csv.DictReader(open(paths['csv'], encoding='utf-8')))) == 3
  with open(paths['png'], 'rb') as f:
    assert f.read(8) == PNG_MAGIC


def test_series_skips_null_and_keeps_the_last_value_per_step():
  runs = [make_run('daps', 0, 10.0, curve=curve(0.0)),
          make_run('daps', 1, 10.0, curve=curve(1.0))]
  series = report._series(runs, 'eval/psnr')
  assert series == {2: [12.0, 13.0], 4: [14.0, 15.0], 6: [16.5, 17.5]}


def test_plot_with_no_data_creates_parent(tmp_path):
  path = tmp_path / 'a' / 'b' / 'figure.png'
  report.plot(path, [make_run('vqvae', 0, 9.0)], methods=['vqvae'])
  assert path.read_bytes()[:8] == PNG_MAGIC


# --- equal compute ------------------------------------------------------------------


def test_psnr_against_seconds_scales_each_method_by_its_step_time():
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  runs = [make_run('daps', 0, 10.0, curve=curve(0.0)), make_run('daps', 1, 10.0, curve=curve(1.0)),
          make_run('fsq', 0, 9.0, curve=curve(5.0)), make_run('vqvae', 0, 9.0, curve=curve(2.0))]
  groups = report._group(runs, None)
  ax = figure.Figure().subplots()
  report._plot_curves(ax, groups, {m: 'k' for m in groups}, 'eval/psnr', 't', 'y',
                      {'daps': 0.5, 'fsq': 0.125})  # vqvae has no time: left out.
  lines = {line.get_label(): line for line in ax.lines}
  assert set(lines) == {'daps', 'fsq'}
  np.testing.assert_allclose(lines['daps'].get_xdata(), [1.0, 2.0, 3.0])
  np.testing.assert_allclose(lines['daps'].get_ydata(), [12.5, 14.5, 17.0])
  np.testing.assert_allclose(lines['fsq'].get_xdata(), [0.25, 0.5, 0.75])
  assert ax.get_xscale() == 'log'


def test_write_with_step_times_draws_four_panels(tmp_path):
  runs = [make_run('daps', 0, 10.0, curve=curve(0.0))]
  with_times = report.write(tmp_path / 'a', runs, META, sec_per_step={'daps': 0.5})
  without = report.write(tmp_path / 'b', runs, META)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  width = {k: Image.open(p['png']).size[0] for k, p in (('with', with_times), ('without', without))}
  assert width['with'] == width['without'] * 4 // 3


def _timing_file(path, records):
  path.write_text(json.dumps({'header': {}, 'records': records}))
  return str(path)


def test_step_times_reads_the_runs_config_and_batch(tmp_path):
  def record(method, seconds, config='fashion_mnist', batch=64):
    return {'config': config, 'method': method, 'batch_size': batch, 'sec_per_step': seconds}
  path = _timing_file(tmp_path / 't.json', [
      record('daps', 0.4), record('daps', 0.1), record('daps', 0.3),  # Rounds: the median.
      record('fsq', 0.1), record('fsq', 9.0, batch=256), record('fsq', 9.0, config='mnist'),
      record('gumbel', 9.0), {'config': 'fashion_mnist', 'method': 'vqvae', 'error': 'killed'}])
  times = report.step_times(path, 'fashion_mnist', 64, ['daps', 'fsq', 'vqvae'])
  assert times == {'daps': 0.3, 'fsq': 0.1}


def test_step_times_bad_file_names_it_and_the_fix(tmp_path):
  missing = str(tmp_path / 'none.json')
  with pytest.raises(errors.UserError, match=r'--step_times .*none\.json.*bench\.train_step'):
    report.step_times(missing, 'fashion_mnist', 64, ['daps'])
  other = _timing_file(tmp_path / 'other.json', [
      {'config': 'fashion_mnist', 'method': 'daps', 'batch_size': 256, 'sec_per_step': 1.0}])
  with pytest.raises(errors.UserError, match=r'no record of config fashion_mnist at batch 64 .*'
                                             r'--batch_size=64'):
    report.step_times(other, 'fashion_mnist', 64, ['daps'])
