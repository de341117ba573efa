"""Rollout, KV cache, start token and sampling distribution of the encoders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from daps_jax import latents
from daps_jax.models import patching
from tests import helpers


@pytest.fixture(scope='module')
def ar():
  return helpers.encoder_setup('ar', vocab_size=5, num_tokens=6, batch=3, seed=2)


@pytest.mark.parametrize('kind', ['ar', 'na'])
def test_rollout_log_q_equals_teacher_forced(kind):
  encoder, params, images = helpers.encoder_setup(kind, vocab_size=5, num_tokens=6, batch=3,
                                                  seed=3)
  rollout = jax.jit(lambda p: latents.sample_latents(encoder, p, images, jax.random.key(1), 4))(
      params)
  assert rollout.tokens.shape == (3, 4, 6) and rollout.log_q.shape == (3, 4)
  assert rollout.tokens.dtype == jnp.int32
  scores = latents.score_latents(encoder, params, images, rollout.tokens)
  np.testing.assert_allclose(rollout.log_q, scores.log_q, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(scores.kl) >= -1e-5)


def test_cached_decoding_equals_uncached(ar):
  encoder, params, images = ar
  tokens = jax.random.randint(jax.random.key(0), (3, 6), 0, 5)
  cross = encoder.apply(params, images, method='encode')
  full = encoder.apply(params, cross, tokens, method='decode')  # [B, L, V]
  cache = encoder.init_cache(3)
  previous = jnp.full((3,), encoder.start_token, jnp.int32)
  for t in range(6):
    logits, cache = encoder.apply(params, previous, jnp.asarray(t), cache, cross,
                                  method='decode_step')
    np.testing.assert_allclose(logits, full[:, t], rtol=1e-5, atol=1e-5)
    previous = tokens[:, t]


def test_start_token_is_not_a_code(ar):
  encoder, params, images = ar
  assert encoder.start_token == encoder.vocab_size
  assert params['params']['token_embed']['embedding'].shape[0] == encoder.vocab_size + 1
  tokens = latents.sample_latents(encoder, params, images, jax.random.key(0), 64).tokens
  assert int(tokens.min()) >= 0 and int(tokens.max()) < encoder.vocab_size
  logits = lambda z: encoder.apply(params, images, jnp.asarray(z, jnp.int32))
  base = np.zeros((3, 6), np.int32)
  other = base.copy()
  other[:, 0] = 1
  # Code 0 is a real input: position 1 sees whether z_0 is 0 or 1 ...
  assert np.abs(logits(base)[:, 1] - logits(other)[:, 1]).max() > 1e-4
  # ... and nothing at or after position t leaks into the logits of t.
  future = base.copy()
  future[:, 3:] = 4
  np.testing.assert_allclose(logits(base)[:, :4], logits(future)[:, :4], atol=1e-6)
  assert np.abs(logits(base)[:, 4] - logits(future)[:, 4]).max() > 1e-4


@pytest.mark.parametrize('kind', ['ar', 'na'])
def test_samples_follow_the_encoder_distribution(kind):
  """L=2, V=4: Pearson chi-square of 20000 draws against the exact q of all 16 sequences.

  The encoder keeps its initial parameters, so every per-position conditional
  q(z_t | z_<t) is far from deterministic (max prob < 0.8) and q is far from
  uniform (total variation > 0.3): a sampler that reuses one key at every step
  of the rollout, which ties z_1 to z_0 through shared Gumbel noise, scores
  X^2 in the thousands. Under the null X^2 is chi-square with 15 degrees of
  freedom (every expected count is >= 20); the threshold is its 1 - 1e-6
  quantile (56.5), so a correct sampler fails for about one key in 10^6.
  """
  vocab, length, n, alpha = 4, 2, 20_000, 1e-6
  encoder, params, images = helpers.encoder_setup(kind, vocab_size=vocab, num_tokens=length,
                                                  batch=1, seed=4)
  seqs = helpers.all_sequences(vocab, length)
  q = np.exp(np.asarray(latents.score_latents(encoder, params, images,
                                              jnp.asarray(seqs)[None]).log_q[0], np.float64))
  assert abs(q.sum() - 1) < 1e-5
  joint = q.reshape(vocab, vocab)
  conditionals = np.concatenate([joint.sum(1, keepdims=True).T / joint.sum(),  # q(z_0)
                                 joint / joint.sum(1, keepdims=True)])  # q(z_1 | z_0)
  assert conditionals.max() < 0.8, conditionals.max()
  assert 0.5 * np.abs(q - 1 / q.size).sum() > 0.3
  assert n * q.min() >= 20  # The chi-square approximation holds.

  tokens = np.asarray(latents.sample_latents(encoder, params, images, jax.random.key(7),
                                             n).tokens[0])
  counts = np.bincount(tokens[:, 0] * vocab + tokens[:, 1], minlength=q.size)
  statistic = ((counts - n * q)**2 / (n * q)).sum()
  threshold = scipy.stats.chi2.isf(alpha, df=q.size - 1)
  assert statistic < threshold, (statistic, threshold)


def test_samples_do_not_depend_on_batch_composition(ar):
  encoder, params, images = ar
  keys = latents.example_keys(jax.random.key(3), 3)
  whole = latents.sample_latents(encoder, params, images, keys, 4)
  part = latents.sample_latents(encoder, params, images[1:], keys[1:], 4)
  np.testing.assert_array_equal(whole.tokens[1:], part.tokens)


@pytest.mark.parametrize('tokens,grid,patch,dim', [
    (8, (2, 4), (14, 8), 112), (64, (8, 8), (4, 4), 48), (1024, (32, 32), (8, 8), 192)])
def test_patch_grid(tokens, grid, patch, dim):
  shape = {8: (28, 28, 1), 64: (32, 32, 3), 1024: (256, 256, 3)}[tokens]
  assert patching.grid_shape(tokens) == grid
  assert patching.patch_shape(shape, tokens) == patch
  assert patching.patch_dim(shape, tokens) == dim


def test_patchify_pads_centred_in_raster_order():
  images = jnp.arange(28 * 28, dtype=jnp.float32).reshape(1, 28, 28, 1) + 1
  patches = patching.patchify(images, 8)  # Canvas 28x32: 2 zero columns each side.
  assert patches.shape == (1, 8, 112)
  first = np.asarray(patches[0, 0]).reshape(14, 8)
  np.testing.assert_array_equal(first[:, :2], 0)
  np.testing.assert_array_equal(first[:, 2:], np.asarray(images[0, :14, :6, 0]))
  second = np.asarray(patches[0, 1]).reshape(14, 8)
  np.testing.assert_array_equal(second, np.asarray(images[0, :14, 6:14, 0]))
  last = np.asarray(patches[0, 7]).reshape(14, 8)
  np.testing.assert_array_equal(last[:, 6:], 0)


def test_raw_and_typed_keys_draw_the_same_samples(ar):
  encoder, params, images = ar
  raw = latents.sample_latents(encoder, params, images, jax.random.PRNGKey(4), 3)
  typed = latents.sample_latents(encoder, params, images, jax.random.key(4), 3)
  np.testing.assert_array_equal(raw.tokens, typed.tokens)
