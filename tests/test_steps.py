"""The fused train step: traces once, learns a toy problem, shards exactly."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from daps_jax import latents
from daps_jax import models
from daps_jax import optim
from daps_jax import parallel
from daps_jax import state as state_lib
from daps_jax.methods import daps
from tests import helpers


def toy_data(rng: np.random.Generator, n: int, prototypes: np.ndarray, flip: float = 0.03):
  """Binary 8x8 images: a random prototype with a few pixels flipped."""
  images = prototypes[rng.integers(len(prototypes), size=n)]
  noise = rng.random(images.shape) < flip
  return np.where(noise, 1 - images, images).astype(np.float32)


def toy_setup(encoder, total_steps: int):
  networks = models.Networks(
      encoder=encoder,
      decoder=models.mlp_decoder(vocab_size=encoder.vocab_size, shape=(8, 8, 1),
                                 embed_dim=8, hidden_dims=(32,)),
      likelihood=models.Bernoulli(), input_shape=(8, 8, 1), num_codes=encoder.vocab_size)
  tx = lambda: optim.adamw(3e-3, weight_decay=1e-4)
  hparams = daps.DapsHparams(num_samples=8, ess_target=0.33,
                             beta=optim.exp_decay(0.5, 0.01, total_steps))
  dual = functools.partial(daps.init_aux, 10.0, optim.adamw(1e-2, weight_decay=0.0, clip=None))
  state = jax.jit(lambda r: state_lib.create_state(
      r, networks, (tx(), tx()), init_aux=lambda *_: dual()))(jax.random.key(0))
  return networks, hparams, state


@pytest.mark.parametrize('kind', ['ar', 'na'])
def test_toy_problem_reconstruction_loss_falls(kind):
  """4 prototypes: the decoder can only beat the best z-independent model by
  reading the prototype's identity from z, i.e. if the encoder learns."""
  make = helpers.tiny_ar_encoder if kind == 'ar' else helpers.tiny_na_encoder
  encoder = make(vocab_size=4, num_tokens=2, width=16)
  total = 400
  networks, hparams, state = toy_setup(encoder, total)
  rng = np.random.default_rng(0)
  prototypes = (rng.random((4, 8, 8, 1)) > 0.5).astype(np.float32)
  step = jax.jit(functools.partial(daps.train_step, networks=networks, hparams=hparams))
  losses = []
  for i in range(total):
    state, metrics = step(state, {'inputs': toy_data(rng, 32, prototypes)}, jax.random.key(1))
    losses.append(float(metrics['loss/decoder']))
  data = toy_data(rng, 4096, prototypes)
  p = data.mean(0).clip(1e-6, 1 - 1e-6)
  best_without_z = -np.sum(p * np.log(p) + (1 - p) * np.log(1 - p))
  final = np.mean(losses[-20:])
  assert np.mean(losses[:10]) > best_without_z  # Starts worse than the marginal ...
  assert final < 0.6 * best_without_z, (final, best_without_z)  # ... ends far better.
  assert int(metrics['optim/encoder_skipped']) == 0


def test_train_step_traces_once():
  encoder = helpers.tiny_ar_encoder(vocab_size=4, num_tokens=2, width=16)
  networks, hparams, state = toy_setup(encoder, 10)
  p_step = parallel.pmap_step(daps.train_step, max_traces=1, networks=networks, hparams=hparams)
  state = parallel.replicate(state)
  images = helpers.random_images(8 * jax.local_device_count())
  for _ in range(3):
    state, metrics = p_step(state, parallel.shard({'inputs': np.asarray(images)}),
                            jax.random.key(0))
  assert int(parallel.unreplicate(state.step)) == 3
  assert np.isfinite(float(metrics['loss/policy'][0]))


_SHARDED_SCRIPT = r'''
import functools, re, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
from daps_jax import models, optim, parallel, state as state_lib
from daps_jax.methods import daps
from tests import helpers
assert jax.local_device_count() == 2, jax.devices()

def networks(bn_axis_name=parallel.AXIS):
  encoder = helpers.tiny_ar_encoder(vocab_size=4, num_tokens=4, width=16)
  return models.Networks(
      encoder=encoder,
      decoder=models.resnet_decoder(vocab_size=4, num_tokens=4, image_shape=(8, 8, 1),
                                    embed_dim=8, channels=8, num_res_blocks=1,
                                    bn_axis_name=bn_axis_name),
      likelihood=models.Gaussian(0.01, 1.0), input_shape=(8, 8, 1), num_codes=4)

def run(devices):
  nets = networks()
  txs = (optim.adamw(1e-3, weight_decay=1e-4), optim.adamw(1e-3, weight_decay=1e-4))
  dual = lambda *_: daps.init_aux(3.0, optim.adamw(1e-2, weight_decay=0.0, clip=None))
  hparams = daps.DapsHparams(num_samples=4, ess_target=0.33, beta=optim.exp_decay(1.0, 0.1, 10))
  state = jax.jit(lambda r: state_lib.create_state(r, nets, txs, init_aux=dual))(
      jax.random.key(0))
  state = parallel.replicate(state, devices)
  step = parallel.pmap_step(daps.train_step, devices=devices, networks=nets, hparams=hparams)
  rng = np.random.default_rng(0)
  for _ in range(3):
    images = rng.normal(size=(8, 8, 8, 1)).astype(np.float32)
    state, metrics = step(state, parallel.shard({'inputs': images}, len(devices)),
                          jax.random.key(5))
  return jax.device_get(jax.tree.map(lambda x: x[0], (state, metrics)))

(s1, m1), (s2, m2) = run(jax.devices()[:1]), run(jax.devices()[:2])
for k in m1:
  np.testing.assert_allclose(m1[k], m2[k], rtol=2e-4, atol=1e-5, err_msg=k)
# Biases of convolutions that feed a BatchNorm have an exactly zero gradient; Adam
# turns its float noise into +-lr steps that differ run to run, and BN removes
# them again (its running means carry them). They are excluded here; the
# decoder's train-mode outputs below show that they change nothing.
dead = re.compile(r"(ResidualBlock_\d+'\]\['Conv_\d|ConvTranspose_0).*bias|batch_stats.*mean")
compared = 0
for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(s1)[0], jax.tree.leaves(s2)):
  name = jax.tree_util.keystr(path)
  if not dead.search(name):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg=name)
    compared += 1
assert compared > 50, compared
tokens = np.arange(32).reshape(8, 4) % 4
decode = lambda s: networks(None).decoder.apply(state_lib.variables(s.decoder), tokens, train=True,
                                            mutable=['batch_stats'])[0]
np.testing.assert_allclose(decode(s1), decode(s2), rtol=2e-4, atol=2e-5)
assert abs(m1['loss/decoder']) > 0 and s1.step == 3
print('SHARDED_OK')
'''


def test_two_devices_equal_one_device():
  """pmap over 2 fake CPU devices == 1 device on the same global batch (with BatchNorm)."""
  env = helpers.cpu_env(2)
  result = subprocess.run([sys.executable, '-c', _SHARDED_SCRIPT, helpers.REPO], env=env,
                          capture_output=True, text=True, timeout=600)
  assert 'SHARDED_OK' in result.stdout, result.stdout + result.stderr


def test_memory_options_leave_the_step_unchanged():
  """model.remat (recomputed blocks), model.attention_chunk (queries a chunk at a
  time) and method.sample_chunks (the teacher-forced pass K / chunks at a time,
  gradients summed) change memory, not numbers: three steps give the same metrics
  and state as the plain step."""
  from daps_jax import build  # pylint: disable=g-import-not-at-top
  from tests import helpers as h  # pylint: disable=g-import-not-at-top

  def run(remat, chunks, attention_chunk):
    config = h.tiny_config('daps')
    config.model.remat, config.method.sample_chunks = remat, chunks
    config.model.attention_chunk = attention_chunk
    assembly = build.assemble(config)
    state = assembly.initial_state()
    step = jax.jit(assembly.method.train_step)
    rng = np.random.default_rng(0)
    for _ in range(3):
      images = (rng.random((8, 28, 28, 1)) > 0.5).astype(np.float32)
      state, metrics = step(state, {'inputs': images}, jax.random.key(2))
    return jax.device_get((state, metrics))

  (s1, m1), (s2, m2), (s4, m4) = run(False, 1, 0), run(True, 2, 2), run(False, 4, 4)
  for other_state, other in ((s2, m2), (s4, m4)):
    for k in m1:
      np.testing.assert_allclose(m1[k], other[k], rtol=1e-4, atol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(other_state)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert float(m1['grad_norm/encoder']) > 0


def test_sample_chunks_shrink_the_compiled_step():
  """bench.memory's analysis: K = 16 samples a quarter at a time need fewer temporaries."""
  from bench import common  # pylint: disable=g-import-not-at-top
  from tests import helpers as h  # pylint: disable=g-import-not-at-top
  temp = {}
  for chunks in (1, 4):
    config = h.tiny_config('daps')
    config.method.num_samples, config.method.sample_chunks = 16, chunks
    config.batch_size = 32
    temp[chunks] = common.memory_analysis(config)['temp_size']
  assert 0 < temp[4] < 0.75 * temp[1], temp


def test_top_k_teacher_forces_the_heaviest_samples_only():
  """method.top_k: the kept samples are each input's k largest weights, and their
  weighted NLL and gradient equal the full K-sample ones with the other weights set
  to 0 (what the option drops, exactly); top_k = K is the plain step."""
  from daps_jax import build  # pylint: disable=g-import-not-at-top
  from tests import helpers as h  # pylint: disable=g-import-not-at-top

  config = h.tiny_config('daps')
  assembly = build.assemble(config)
  state = assembly.initial_state()
  encoder = assembly.networks.encoder
  rng = np.random.default_rng(0)
  x = jnp.asarray((rng.random((3, 28, 28, 1)) > 0.5).astype(np.float32))
  rollout = latents.sample_latents(encoder, {'params': state.encoder.params}, x,
                                   jax.random.key(1), 4)
  weights = jax.nn.softmax(jnp.asarray(rng.standard_normal((3, 4)), jnp.float32), -1)
  tokens, kept = daps.top_k_samples(rollout.tokens, weights, 2)
  order = np.argsort(-np.asarray(weights), axis=1)[:, :2]
  np.testing.assert_array_equal(kept, np.take_along_axis(np.asarray(weights), order, 1))
  np.testing.assert_array_equal(tokens, np.take_along_axis(np.asarray(rollout.tokens),
                                                           order[..., None], 1))
  mask = np.zeros((3, 4), np.float32)
  np.put_along_axis(mask, order, 1.0, axis=1)
  loss_k, _, grads_k = daps.weighted_nll_and_grad(encoder, state.encoder.params, x, tokens, kept)
  loss, _, grads = daps.weighted_nll_and_grad(encoder, state.encoder.params, x, rollout.tokens,
                                              weights * mask)
  np.testing.assert_allclose(loss_k, loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_k), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

  def run(top_k):
    config = h.tiny_config('daps')
    config.method.top_k = top_k
    run = build.assemble(config)
    images = (np.random.default_rng(3).random((8, 28, 28, 1)) > 0.5).astype(np.float32)
    return jax.jit(run.method.train_step)(run.initial_state(), {'inputs': images},
                                          jax.random.key(2))

  (s0, m0), (s4, m4), (s1, m1) = run(0), run(4), run(1)
  for a, b in zip(jax.tree.leaves(s0), jax.tree.leaves(s4)):
    np.testing.assert_array_equal(a, b)
  assert float(m4['policy/kept_weight']) == pytest.approx(1.0)
  assert 0.25 <= float(m1['policy/kept_weight']) < 1.0  # The largest of 4 weights summing to 1.
  assert not np.allclose(jax.tree.leaves(s1.encoder.params)[0],
                         jax.tree.leaves(s0.encoder.params)[0])


@pytest.mark.parametrize('method', ['daps', 'daps_na'])
def test_bfloat16_encoder_keeps_float32_parameters_and_log_q(method):
  """model.dtype = 'bfloat16': the same float32 parameters; logits, log q and the losses
  float32; log q within bf16 rounding of the float32 encoder's; the rollout's log q equals
  teacher forcing to that rounding; a train step moves the encoder and stays finite."""
  from daps_jax import build  # pylint: disable=g-import-not-at-top
  from tests import helpers as h  # pylint: disable=g-import-not-at-top

  runs = {}
  for dtype in ('float32', 'bfloat16'):
    config = h.tiny_config(method)
    config.model.dtype = dtype
    runs[dtype] = build.assemble(config)
  state = runs['float32'].initial_state()
  low = runs['bfloat16'].initial_state()
  for a, b in zip(jax.tree.leaves(state.encoder.params), jax.tree.leaves(low.encoder.params)):
    assert a.dtype == b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
  x = jnp.asarray((np.random.default_rng(0).random((4, 28, 28, 1)) > 0.5).astype(np.float32))
  variables = {'params': state.encoder.params}
  scores, rollouts = {}, {}
  for dtype, run in runs.items():
    rollouts[dtype] = latents.sample_latents(run.networks.encoder, variables, x,
                                             jax.random.key(1), 4)
    scores[dtype] = latents.score_latents(run.networks.encoder, variables, x,
                                          rollouts['float32'].tokens)
    assert scores[dtype].log_q.dtype == jnp.float32
  np.testing.assert_allclose(scores['bfloat16'].log_q, scores['float32'].log_q, rtol=0.03,
                             atol=0.05)
  low_scores = latents.score_latents(runs['bfloat16'].networks.encoder, variables, x,
                                     rollouts['bfloat16'].tokens)
  np.testing.assert_allclose(rollouts['bfloat16'].log_q, low_scores.log_q, rtol=0.03, atol=0.05)
  images = (np.random.default_rng(3).random((8, 28, 28, 1)) > 0.5).astype(np.float32)
  new, metrics = jax.jit(runs['bfloat16'].method.train_step)(low, {'inputs': images},
                                                              jax.random.key(2))
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert jax.tree.leaves(new.encoder.params)[0].dtype == jnp.float32
  assert not np.allclose(jax.tree.leaves(new.encoder.params)[0],
                         jax.tree.leaves(low.encoder.params)[0])
