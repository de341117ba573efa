"""Data for daps_jax: sources, per-dataset preprocessing and grain pipelines.

`train_loader` gives an endless, resumable stream of model-space images;
`eval_batches` the eval split once, padded and masked; `get_spec` what the
model needs to know (shape, likelihood, standardisation); `to_unit` maps model
space back to [0, 1]. Datasets are prepared with `python -m
daps_jax.data.prepare`.
"""

from daps_jax.data.pipeline import TrainLoader, eval_batches, num_eval_examples, train_loader
from daps_jax.data.preprocess import SPECS, DatasetSpec, get_spec, to_unit
from daps_jax.data.sources import DataError, get_source

__all__ = [
    'SPECS',
    'DataError',
    'DatasetSpec',
    'TrainLoader',
    'eval_batches',
    'get_source',
    'get_spec',
    'num_eval_examples',
    'to_unit',
    'train_loader',
]
