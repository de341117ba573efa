"""Data for daps_jax: sources, per-dataset preprocessing and grain pipelines.

`train_loader` gives an endless, resumable stream of model-space inputs
(batches `{'inputs': [B, *spec.shape]}`); `eval_batches` the eval split once,
padded and masked; `get_spec` what the model needs to know (modality, shape,
likelihood, standardisation, and `DatasetSpec.to_unit`, the map from model space
back to data units). Datasets are prepared with `python -m
daps_jax.data.prepare`.
"""

from daps_jax.data.pipeline import TrainLoader, eval_batches, num_eval_examples, train_loader
from daps_jax.data.preprocess import NAMES, SPECS, DatasetSpec, get_spec, likelihood
from daps_jax.data.sources import get_source

__all__ = [
    'NAMES',
    'SPECS',
    'DatasetSpec',
    'TrainLoader',
    'eval_batches',
    'get_source',
    'get_spec',
    'likelihood',
    'num_eval_examples',
    'train_loader',
]
