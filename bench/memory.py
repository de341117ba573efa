"""Compiled memory of the train step: XLA's memory analysis, without running anything.

  python -m bench.memory                                         # every config x daps, daps_na
  python -m bench.memory --configs=imagenet --methods=daps --paper_batch
  python -m bench.memory --configs=imagenet --methods=daps --paper_batch \\
      --override=method.sample_chunks=1 --override=model.remat=False   # without the options

For each config x method the trainer's step (`method.train_step`, state donated
as `daps_jax.train` does) is lowered on abstract inputs of the per-device batch
and compiled for this machine's first device; `compiled.memory_analysis()` gives
the bytes of the arguments, outputs, aliased (donated) buffers and temporaries.
Nothing is allocated or executed, so a step that cannot fit here can still be
sized (XLA CPU's buffer assignment; a GPU's differs by its kernels, e.g. cuDNN
flash attention). The per-device batch is the config's (`--paper_batch`, the
paper's), else `--batch_size`, else the config's batch divided by 8 (a quick
look). LAFAN1 uses the BVH's 136 features (`data.motion.nominal_spec`).
Results: a line per case and `--output` (JSON).
"""

import datetime
import json
import os
import platform
import sys

from absl import app
from absl import flags
import jax

from bench import common
from daps_jax import config_lib

_CONFIGS = flags.DEFINE_list('configs', ['mnist', 'cifar10', 'imagenet', 'lafan1'],
                             'Files in configs/, without .py.')
_METHODS = flags.DEFINE_list('methods', ['daps', 'daps_na'], 'Methods (daps_jax.methods.NAMES).')
_PAPER = flags.DEFINE_bool('paper_batch', False, "The config's (the paper's) batch per device.")
_BATCH = flags.DEFINE_integer('batch_size', None, 'Per-device batch (default: see the doc).')
_OVERRIDE = flags.DEFINE_multi_string('override', [], 'field=value, as bench.train_step.')
_OUTPUT = flags.DEFINE_string('output', 'bench/results/memory.json', 'JSON file of the records.')

GB = 1e9


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}', exitcode=2)
  overrides = common.parse_overrides(_OVERRIDE.value)
  records = []
  for name in _CONFIGS.value:
    for method in _METHODS.value:
      config = common.load_config(name, method)
      for dotted, value in overrides.items():
        config_lib.set_field(config, dotted, value)
      config.batch_size = (config.batch_size if _PAPER.value else
                           _BATCH.value or max(1, config.batch_size // 8))
      config_lib.validate(config)
      record = {'config': name, 'method': method, 'batch_per_device': config.batch_size,
                'overrides': {k: str(v) for k, v in overrides.items()},
                'remat': bool(config.model.get('remat', False)),
                'sample_chunks': int(config.method.get('sample_chunks', 1)),
                **common.memory_analysis(config)}
      records.append(record)
      print(f'{name} {method} B={config.batch_size}: temp {record["temp_size"] / GB:.2f} GB, '
            f'arguments {record["argument_size"] / GB:.3f} GB, outputs '
            f'{record["output_size"] / GB:.3f} GB, aliased {record["alias_size"] / GB:.3f} GB',
            flush=True)
  os.makedirs(os.path.dirname(_OUTPUT.value) or '.', exist_ok=True)
  header = {'machine': f'{platform.node()}, {os.cpu_count()} CPUs', 'jax': jax.__version__,
            'device': jax.devices()[0].device_kind, 'command': ' '.join(sys.argv),
            'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
  with open(_OUTPUT.value, 'w') as f:
    json.dump({'header': header, 'records': records}, f, indent=1)


if __name__ == '__main__':
  app.run(main)
