"""The table of one `bench/side_by_side.sh` sitting: python -m bench.side_by_side OUT.

Writes OUT/side_by_side.md and OUT/side_by_side.json: per case, our seconds per step
and the authors' in every round (the ratio is theirs / ours, so > 1 means ours is
faster), compile times (ours: the first call; theirs: trace + lower + compile + the
first execution, the same span), each option's seconds per step against the plain
step of the same round, the trainer's steps/s on real data, and the load before
every case.
"""

import glob
import json
import os
import re
import statistics
import sys

# Our case -> the authors' dataset name.
CASES = {'mnist': 'mnist', 'cifar10': 'cifar', 'imagenet': 'imagenet256'}
# The steps/s of a bench/jadex_trainer.py record: the median of its windows after the first,
# as _our_trainer reads ours.
TRAINER_RATE = 'window_median_steps_per_s'


def _ours(out: str) -> dict[tuple[str, int], dict]:
  records = {}
  for path in glob.glob(os.path.join(out, 'ours_*_r*.json')):
    name, round_ = re.fullmatch(r'ours_(.+)_r(\d+)\.json', os.path.basename(path)).groups()
    with open(path) as f:
      (record,) = json.load(f)['records']
    records[name, int(round_)] = record
  return records


def _theirs(out: str) -> dict[tuple[str, int], dict]:
  records = {}
  for path in glob.glob(os.path.join(out, 'jadex_r*.jsonl')):
    round_ = int(re.fullmatch(r'jadex_r(\d+)\.jsonl', os.path.basename(path)).group(1))
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        records[record['dataset'], round_] = record
  return records


def _range(values: list[float], fmt: str = '.3f') -> str:
  low, high = min(values), max(values)
  return f'{low:{fmt}}' if low == high else f'{low:{fmt}}–{high:{fmt}}'


def _our_trainer(path: str) -> float:
  """Median steps/s over the progress windows of one run (the first window holds the compile)."""
  with open(path) as f:
    rates = [r['perf/steps_per_sec'] for r in map(json.loads, f) if r.get('perf/steps_per_sec')]
  return statistics.median(rates[1:] or rates)


def _trainers(out: str, summary: dict) -> list[str]:
  """Rows of the whole trainers: ours per variant and the authors', steps/s per round."""
  rows = {}
  for path in glob.glob(os.path.join(out, 'trainer_*_r*_metrics.jsonl')):
    name, round_ = re.fullmatch(r'trainer_(.+)_r(\d+)_metrics\.jsonl',
                                os.path.basename(path)).groups()
    rows.setdefault(f'ours ({name})', {})[int(round_)] = _our_trainer(path)
  for path in glob.glob(os.path.join(out, 'jadex_trainer_r*.jsonl')):
    round_ = int(re.fullmatch(r'jadex_trainer_r(\d+)\.jsonl', os.path.basename(path)).group(1))
    with open(path) as f:
      (record,) = [json.loads(line) for line in f]
    rows.setdefault('authors', {})[round_] = record[TRAINER_RATE]
  if not rows:
    return []
  theirs = rows.get('authors', {})
  lines = ['', 'Whole trainers, Fashion-MNIST (real data), batch 256, 300 steps, FID off:', '',
           '| trainer | steps/s per round | ours / authors |', '| :-- | :-- | --: |']
  summary['trainers'] = {}
  for name, by_round in sorted(rows.items()):
    rates = [by_round[r] for r in sorted(by_round)]
    ratios = [by_round[r] / theirs[r] for r in sorted(by_round) if r in theirs]
    ratio = '–' if name == 'authors' or not ratios else f'{_range(ratios, ".2f")}×'
    lines.append(f'| {name} | {", ".join(f"{v:.2f}" for v in rates)} | {ratio} |')
    summary['trainers'][name] = {'steps_per_s': rates, 'ours_over_authors': ratios}
  return lines


def table(out: str) -> tuple[str, dict]:
  ours, theirs = _ours(out), _theirs(out)
  rounds = sorted({r for _, r in ours})
  lines = ['| case | B | ours s/step | authors s/step | authors / ours | ours compile s | '
           'authors compile s |', '| :-- | --: | --: | --: | --: | --: | --: |']
  summary = {'cases': {}, 'options': {}}
  for case, dataset in CASES.items():
    pairs = [(ours[case, r], theirs[dataset, r]) for r in rounds
             if (case, r) in ours and (dataset, r) in theirs]
    if not pairs:
      continue
    mine = [o['sec_per_step'] for o, _ in pairs]
    other = [t['step_median_s'] for _, t in pairs]
    ratios = [t / o for o, t in zip(mine, other)]
    compile_ours = [o['compile_s'] for o, _ in pairs]
    compile_theirs = [t['compile_plus_first_s'] for _, t in pairs]
    lines.append(f'| {case} daps | {pairs[0][0]["batch_size"]} | {_range(mine)} | {_range(other)} '
                 f'| {_range(ratios, ".2f")}× | {_range(compile_ours, ".1f")} | '
                 f'{_range(compile_theirs, ".1f")} |')
    summary['cases'][case] = {'ours_s': mine, 'theirs_s': other, 'ratio': ratios,
                              'ours_compile_s': compile_ours, 'theirs_compile_s': compile_theirs}
  lines += ['', '| option | case | s/step | plain s/step | option / plain |',
            '| :-- | :-- | --: | --: | --: |']
  for name in sorted({n for n, _ in ours if n not in CASES}):
    case = name.split('_')[0]
    pairs = [(ours[name, r]['sec_per_step'], ours[case, r]['sec_per_step']) for r in rounds
             if (name, r) in ours and (case, r) in ours]
    if not pairs:
      continue
    option = name[len(case) + 1:]
    ratios = [a / b for a, b in pairs]
    lines.append(f'| {option} | {case} | {_range([a for a, _ in pairs])} | '
                 f'{_range([b for _, b in pairs])} | {_range(ratios, ".2f")} |')
    summary['options'][name] = {'s': [a for a, _ in pairs], 'plain_s': [b for _, b in pairs],
                                'ratio': ratios}
  lines += _trainers(out, summary)
  load = os.path.join(out, 'load.txt')
  if os.path.exists(load):
    averages = [float(m.group(1)) for m in re.finditer(r'load average: ([\d.]+)',
                                                       open(load).read())]
    summary['load_1min'] = averages
    lines += ['', f'1-minute load average before the cases: {_range(averages, ".2f")} '
              f'({len(averages)} cases).']
  return '\n'.join(lines) + '\n', summary


def main(argv):
  if len(argv) != 2:
    sys.exit('usage: python -m bench.side_by_side OUT')
  text, summary = table(argv[1])
  with open(os.path.join(argv[1], 'side_by_side.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(argv[1], 'side_by_side.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  print(text)


if __name__ == '__main__':
  main(sys.argv)
