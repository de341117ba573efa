"""The code prior: its model and pure steps (exact on an enumerable code space), and
`python -m daps_jax.prior` on a tiny trained run (resume, 2 devices == 1, bad input)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from daps_jax import build
from daps_jax import data
from daps_jax import optim
from daps_jax import parallel
from daps_jax import state as state_lib
from daps_jax import train
from daps_jax.models import prior as prior_model
from daps_jax.prior import config as prior_config
from daps_jax.prior import loop
from daps_jax.prior import steps
from tests import helpers

V, L = 4, 5  # The synthetic code space: 4^5 = 1024 sequences, enumerable.


def _prior(num_classes=2, width=32, layers=2):
  return prior_model.CodePrior(vocab_size=V, num_tokens=L, width=width, num_layers=layers,
                               num_heads=2, num_classes=num_classes)


def _state(prior, seed=0, learning_rate=3e-3):
  variables = prior.init(jax.random.key(seed), jnp.zeros((1, L), jnp.int32),
                         jnp.zeros((1,), jnp.int32))
  tx = optim.adamw(learning_rate, weight_decay=0.0, clip=None)
  return state_lib.model_state(variables, tx)


def _chain(stay: float, first: int) -> tuple[np.ndarray, np.ndarray]:
  """A Markov chain over V codes: start at `first` w.p. 0.7, then keep the code w.p.
  `stay` or move to the next one (mod V)."""
  initial = np.full(V, 0.1)
  initial[first] = 0.7
  transition = np.zeros((V, V))
  for v in range(V):
    transition[v, v], transition[v, (v + 1) % V] = stay, 1 - stay
  return initial, transition


CHAINS = (_chain(0.8, 0), _chain(0.3, 2))  # Class 0 and class 1.


def _sequence_probs(chain) -> np.ndarray:
  """p(z) of every sequence of `helpers.all_sequences(V, L)` under one chain."""
  initial, transition = chain
  seqs = helpers.all_sequences(V, L)
  p = initial[seqs[:, 0]]
  for t in range(1, L):
    p = p * transition[seqs[:, t - 1], seqs[:, t]]
  return p


def _draw(n: int, seed: int) -> dict[str, np.ndarray]:
  """n labelled sequences: the label picks the chain (half each)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  seqs = helpers.all_sequences(V, L)
  tokens = np.empty((n, L), np.int32)
  for c in (0, 1):
    rows = labels == c
    tokens[rows] = seqs[rng.choice(len(seqs), rows.sum(), p=_sequence_probs(CHAINS[c]))]
  return {'tokens': tokens, 'labels': labels.astype(np.int32)}


@pytest.fixture(scope='module')
def trained_markov():
  """A conditional prior trained on the two chains (label dropout 0.5)."""
  prior = _prior()
  state = _state(prior)
  step = jax.jit(lambda s, b, k: steps.train_step(s, b, k, prior=prior, label_dropout=0.5))
  data = _draw(60_000, seed=1)
  rng = np.random.default_rng(0)
  for i in range(600):
    rows = rng.integers(0, len(data['tokens']), 256)
    state, _ = step(state, {k: v[rows] for k, v in data.items()}, jax.random.key(i))
  return prior, state


def test_sampled_log_prob_equals_teacher_forced_log_prob():
  """The KV-cache rollout's log p of its own codes equals teacher forcing, with and
  without a class, at any temperature or top-k (log p is the model's own)."""
  prior = _prior(width=16)
  state = _state(prior, seed=3)
  labels = jnp.array([0, 1, -1, 0, 1, -1, 0, 1], jnp.int32)
  for temperature, top_k in ((1.0, 0), (0.7, 2)):
    tokens, log_p = steps.sample(state, labels, jax.random.key(4), prior=prior,
                                 temperature=temperature, top_k=top_k)
    assert tokens.shape == (8, L) and tokens.dtype == jnp.int32
    forced = steps.log_prob(prior, state.params, tokens, steps._labels(prior, labels))
    np.testing.assert_allclose(log_p, forced, rtol=1e-5, atol=1e-5)
  # top-k 1 is greedy: the most likely code at each step.
  greedy, _ = steps.sample(state, labels, jax.random.key(5), prior=prior, top_k=1)
  again, _ = steps.sample(state, labels, jax.random.key(6), prior=prior, top_k=1)
  np.testing.assert_array_equal(greedy, again)


def test_cached_decode_equals_teacher_forcing():
  """decode_step against the fixed-length cache gives teacher forcing's logits at every
  position (the prior's cached == uncached)."""
  prior = _prior(width=16)
  variables = {'params': _state(prior, seed=7).params}
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (6, L)), jnp.int32)
  labels = jnp.array([0, 1, 2, 0, 1, 2], jnp.int32)  # 2 = no class.
  forced = prior.apply(variables, tokens, labels)
  cache = prior.init_cache(6)
  token = jnp.full((6,), prior.start_token, jnp.int32)
  for t in range(L):
    logits, cache = prior.apply(variables, token, jnp.asarray(t), cache, labels,
                                method='decode_step')
    np.testing.assert_allclose(logits, forced[:, t], rtol=1e-5, atol=1e-5)
    token = tokens[:, t]


def test_unconditional_prior_ignores_labels():
  prior = _prior(num_classes=0, width=16)
  state = _state(prior)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (4, L)), jnp.int32)
  a = steps.log_prob(prior, state.params, tokens, steps._labels(prior, jnp.zeros(4, jnp.int32)))
  b = steps.log_prob(prior, state.params, tokens, None)
  np.testing.assert_array_equal(a, b)


def test_held_out_nll_approaches_the_exact_entropy(trained_markov):
  """On codes from two known Markov chains, the held-out NLL of p(z | c) and of p(z)
  approach the exact entropies (by enumeration of all 4^5 sequences), far below the
  independent per-position baseline and log V."""
  prior, state = trained_markov
  held_out = _draw(4_000, seed=2)
  probs = [_sequence_probs(c) for c in CHAINS]
  entropy = lambda p: float(-(p * np.log(np.maximum(p, 1e-300))).sum())
  conditional_entropy = 0.5 * (entropy(probs[0]) + entropy(probs[1]))
  marginal_entropy = entropy(0.5 * (probs[0] + probs[1]))
  batch = {**held_out, 'mask': np.ones(4_000, bool)}
  sums = steps.eval_step(state, batch, None, prior=prior, num_codes=V)
  nll, nll_c = float(sums['nll']) / 4_000, float(sums['nll_conditional']) / 4_000
  # Sampling error of a 4,000-sequence mean: ~0.03 nats; model error on top.
  assert abs(nll_c - conditional_entropy) < 0.1, (nll_c, conditional_entropy)
  assert abs(nll - marginal_entropy) < 0.1, (nll, marginal_entropy)
  independent = loop.independent_nll(_draw(60_000, seed=1)['tokens'], held_out['tokens'], V)
  assert nll < independent - 0.5, (nll, independent)
  assert independent < L * np.log(V)


def test_class_conditioning_changes_samples(trained_markov):
  """Chain 0 stays on its code (runs), chain 1 moves on: the samples of each class show
  their chain's statistics, and unconditional samples the mixture's."""
  prior, state = trained_markov
  n = 600
  stay_share = {}
  for label in (0, 1, -1):
    tokens, _ = steps.sample(state, jnp.full((n,), label, jnp.int32), jax.random.key(9),
                             prior=prior)
    tokens = np.asarray(tokens)
    stay_share[label] = float((tokens[:, 1:] == tokens[:, :-1]).mean())
  assert abs(stay_share[0] - 0.8) < 0.05 and abs(stay_share[1] - 0.3) < 0.05, stay_share
  assert abs(stay_share[-1] - 0.55) < 0.07, stay_share


def test_independent_baseline_by_hand():
  train_tokens = np.array([[0, 1], [0, 1], [1, 1]])
  eval_tokens = np.array([[0, 0]])
  # Position 0: counts (2, 1) -> p(0) = 2.5 / 4; position 1: counts (0, 3) -> p(0) = 0.5 / 4.
  expected = -np.log(2.5 / 4) - np.log(0.5 / 4)
  np.testing.assert_allclose(loop.independent_nll(train_tokens, eval_tokens, 2), expected)


@pytest.mark.parametrize('method', ['daps', 'fsq', 'vqvae'])
def test_method_decode_matches_its_encoding(method):
  """`Method.decode` of the codes `encode` gives reproduces encode's decoder output
  (FSQ: through its grid codes; VQ-VAE: the codebook rows)."""
  run = build.assemble(helpers.tiny_config(method))
  state = jax.tree.map(jnp.asarray, run.initial_state())
  x = helpers.random_images(4, (28, 28, 1)).round()
  encoding = run.method.encode(state, x, jax.random.key(0), networks=run.networks)
  np.testing.assert_allclose(run.method.decode(state, encoding.tokens, networks=run.networks),
                             encoding.out, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- on a run

def _tiny_prior_config(**overrides):
  c = prior_config.default()
  c.width, c.num_layers, c.num_heads = 16, 1, 2
  c.total_steps, c.batch_size = 4, 1024  # 4,000 training digits: 3 steps per epoch.
  c.eval_every_steps = c.checkpoint_every_steps = 2
  c.log_every_steps = 1
  c.optim.warmup_steps, c.optim.final_learning_rate = 0, c.optim.learning_rate  # Constant.
  c.sample.grid_per_class = 2
  c.sample.fid_every_steps = -1
  c.update(overrides)
  return c


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp('run')
  train.train_and_evaluate(helpers.tiny_config('daps'), str(workdir))
  return workdir


def _copy_run(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  target = tmp_path / 'run'
  tmp_path.mkdir(parents=True, exist_ok=True)
  subprocess.run(['cp', '-r', str(run), str(target)], check=True)
  return target


def _final_params(directory: pathlib.Path, step: int):
  """The prior's parameters in its checkpoint of `step`, as saved."""
  path = directory / 'checkpoints' / str(step) / 'state'
  return ocp.StandardCheckpointer().restore(path.absolute())['params']


def test_prior_on_a_run_writes_metrics_samples_and_resumes_exactly(trained_run, tmp_path):
  """4 steps in one go == 2 steps, then a resume to 4 (the epoch's codes are drawn
  again from the run's keys), parameters and held-out metrics alike."""
  once = _copy_run(trained_run, tmp_path / 'a')
  metrics = loop.train_prior(str(once), _tiny_prior_config())
  prior_dir = once / 'prior'
  for name in ('config.json', 'metrics.jsonl', 'eval_00000002.json', 'eval_00000004.json',
               'samples_00000004.png'):
    assert (prior_dir / name).exists(), name
  assert metrics['prior/uniform_bits_per_token'] == 4.0  # 16 codes.
  for key in ('prior/bits_per_token', 'prior/conditional_bits_per_token',
              'prior/independent_bits_per_token', 'prior/elbo', 'prior/elbo_uniform'):
    assert np.isfinite(metrics[key]), key
  # The ELBO with the prior differs from the uniform one by exactly the code bits saved.
  code_nats_saved = 8 * np.log(16) - metrics['prior/nll']  # L log V - held-out NLL.
  np.testing.assert_allclose(metrics['prior/elbo'] - metrics['prior/elbo_uniform'],
                             code_nats_saved, rtol=1e-4)
  saved = json.loads((prior_dir / 'config.json').read_text())
  assert saved['source']['step'] == 2 and saved['source']['method'] == 'daps'

  twice = _copy_run(trained_run, tmp_path / 'b')
  loop.train_prior(str(twice), _tiny_prior_config(total_steps=2))
  resumed = loop.train_prior(str(twice), _tiny_prior_config())
  for key, value in metrics.items():
    np.testing.assert_allclose(resumed[key], value, rtol=1e-5, err_msg=key)
  for a, b in zip(jax.tree.leaves(_final_params(prior_dir, 4)),
                  jax.tree.leaves(_final_params(twice / 'prior', 4))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_gfid_scores_the_samples_asked_for_and_is_zero_on_the_originals(trained_run, tmp_path):
  """A sampler that returns the validation originals in order (1,000 digits, batches of
  250): gFID ~0 with one sample per input; `num_fid_samples` scores that many, past
  the end of the split too, and a pass with cold statistics still sees every original."""
  source = loop.load_source(str(trained_run))
  source.run.config.fid.resolution = 75
  source.run.config.fid.stats_dir = str(tmp_path)
  spec, batch_size = source.run.spec, source.run.config.eval_batch_size
  originals = [np.clip(spec.to_unit(b['inputs']), 0, 1) for b in data.eval_batches(
      spec.name, data_dir=source.run.config.data.dir, batch_size=batch_size)]
  calls = []

  def sample(labels, i):
    assert labels.shape == (batch_size,) and (labels == -1).all()
    calls.append(i)
    return parallel.shard(originals[i % len(originals)])

  fid, count = loop._gfid(source, sample, 300)  # Statistics not cached yet.
  assert count == 300 and calls == [0, 1] and fid > 1.0
  cached = [np.load(tmp_path / name) for name in os.listdir(tmp_path)]
  assert [int(c['count']) for c in cached] == [1000]  # Every original, not the first 300.
  calls.clear()
  fid, count = loop._gfid(source, sample, 0)
  assert count == 1000 and calls == [0, 1, 2, 3] and abs(fid) < 1e-3
  calls.clear()
  fid, count = loop._gfid(source, sample, 1500)  # Past the split: 2 more batches.
  assert count == 1500 and calls == [0, 1, 2, 3, 4, 5] and fid > 1e-3


def test_resume_with_other_settings_is_refused(trained_run, tmp_path):
  run = _copy_run(trained_run, tmp_path)
  loop.train_prior(str(run), _tiny_prior_config(total_steps=2))
  with pytest.raises(loop.PriorError, match='config.width differs'):
    loop.train_prior(str(run), _tiny_prior_config(width=32))


_SHARDED_SCRIPT = r'''
import sys, json
import jax
sys.path.insert(0, sys.argv[1])
from daps_jax.prior import loop
from tests import test_prior
assert jax.local_device_count() == int(sys.argv[3]), jax.devices()
metrics = loop.train_prior(sys.argv[2], test_prior._tiny_prior_config())
print('METRICS', json.dumps(metrics))
'''


def test_prior_two_devices_equal_one_device(trained_run, tmp_path):
  """Encoding, training, held-out scores and samples with the batches split over 2 fake
  CPU devices give 1 device's metrics and parameters."""
  results = {}
  for devices in (1, 2):
    run = _copy_run(trained_run, tmp_path / str(devices))
    env = helpers.cpu_env(devices)
    out = subprocess.run([sys.executable, '-c', _SHARDED_SCRIPT, helpers.REPO, str(run),
                          str(devices)], env=env, capture_output=True, text=True, timeout=600)
    lines = [l for l in out.stdout.splitlines() if l.startswith('METRICS ')]
    assert lines, out.stdout + out.stderr[-3000:]
    results[devices] = (json.loads(lines[0][8:]), _final_params(run / 'prior', 4))
  (m1, p1), (m2, p2) = results[1], results[2]
  for key in m1:
    np.testing.assert_allclose(m1[key], m2[key], rtol=1e-4, err_msg=key)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  sample_1 = (tmp_path / '1' / 'run' / 'prior' / 'samples_00000004.png').read_bytes()
  sample_2 = (tmp_path / '2' / 'run' / 'prior' / 'samples_00000004.png').read_bytes()
  assert sample_1 == sample_2


def _cli(workdir, *flags):
  return subprocess.run([sys.executable, '-m', 'daps_jax.prior', f'--workdir={workdir}', *flags],
                        capture_output=True, text=True, timeout=300, cwd=helpers.REPO)


def test_bad_input_gets_one_line(trained_run, tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  result = _cli(empty)
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'config.json does not exist' in result.stderr

  no_checkpoints = tmp_path / 'no_checkpoints'
  no_checkpoints.mkdir()
  (no_checkpoints / 'config.json').write_text((trained_run / 'config.json').read_text())
  result = _cli(no_checkpoints)
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
  assert 'holds no checkpoint: train the run first' in result.stderr.splitlines()[-1]

  result = _cli(no_checkpoints, '--config.codes=mode')
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
  assert "config.codes: 'mode'" in result.stderr.splitlines()[-1]
