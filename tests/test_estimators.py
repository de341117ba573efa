"""The methods' gradient estimators: exact straight-through algebra and Monte-Carlo identities.

Straight-through (`methods.base`), Gumbel-softmax and Gumbel-Rao (`methods.relaxed`),
vector quantisation and its EMA codebook (`methods.vqvae`), FSQ (`methods.fsq`).

Sampling checks use fixed seeds and a tolerance of 5 standard errors (estimated
from the draws themselves), so they fail on a biased sampler, not by chance.
"""

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from daps_jax.methods import base
from daps_jax.methods import fsq
from daps_jax.methods import relaxed
from daps_jax.methods import vqvae

V, NUM_DRAWS, NUM_SE = 4, 20_000, 5.0


def random_logits(seed: int, shape, scale: float = 1.0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).normal(scale=scale, size=shape), jnp.float32)


def assert_means_agree(a: np.ndarray, b: np.ndarray):
  """Sample means over axis 0 of two independent draws agree within NUM_SE errors."""
  se = np.sqrt(a.var(0) / a.shape[0] + b.var(0) / b.shape[0])
  np.testing.assert_array_less(np.abs(a.mean(0) - b.mean(0)), NUM_SE * se + 1e-7)


def test_straight_through_value_and_gradient():
  hard = random_logits(0, (3, 5), scale=10.0)
  soft = random_logits(1, (3, 5))
  w = random_logits(2, (3, 5))
  np.testing.assert_array_equal(base.straight_through(hard, soft), hard)
  through = jax.grad(lambda h, s: jnp.sum(jnp.sin(base.straight_through(h, s)) * w),
                     argnums=(0, 1))(hard, soft)
  # Downstream derivative is taken at the hard value, then passed to soft unchanged.
  np.testing.assert_array_equal(through[0], 0.0)
  np.testing.assert_allclose(through[1], jnp.cos(hard) * w, rtol=1e-6)


def test_gumbel_softmax_forward_and_gradient_with_traced_tau():
  rng, logits, w = jax.random.key(3), random_logits(3, (2, 3, 6)), random_logits(4, (2, 3, 6))

  @jax.jit
  def grads(logits, tau):
    loss = lambda lg: jnp.sum(relaxed.gumbel_softmax(rng, lg, tau).sample * w)
    manual = lambda lg: jnp.sum(
        jax.nn.softmax((lg + jax.random.gumbel(rng, lg.shape)) / tau) * w)
    return jax.grad(loss)(logits), jax.grad(manual)(logits)

  out = relaxed.gumbel_softmax(rng, logits, 0.7)
  assert out.index.dtype == jnp.int32 and out.index.shape == (2, 3)
  np.testing.assert_array_equal(out.sample, jax.nn.one_hot(out.index, 6))
  np.testing.assert_array_equal(out.index,
                                jnp.argmax(logits + jax.random.gumbel(rng, logits.shape), -1))
  got, want = grads(logits, jnp.float32(0.7))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(got)).max() > 1e-3


def test_gumbel_softmax_index_frequencies_match_softmax():
  logits = jnp.array([1.0, -0.5, 0.3, -2.0])
  index = relaxed.gumbel_softmax(jax.random.key(5), jnp.broadcast_to(logits, (NUM_DRAWS, V)),
                             1.0).index
  freq = np.bincount(np.asarray(index), minlength=V) / NUM_DRAWS
  p = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_array_less(np.abs(freq - p), NUM_SE * np.sqrt(p * (1 - p) / NUM_DRAWS))


@pytest.mark.parametrize('scale, dtype', [(1.0, jnp.float32), (30.0, jnp.float32),
                                          (3.0, jnp.bfloat16)])
def test_conditional_gumbels_argmax_is_index(scale, dtype):
  """Includes very peaked logits with improbable indices, and bfloat16 (rounding ties)."""
  logits = random_logits(6, (500, 7), scale).astype(dtype)
  index = jax.random.randint(jax.random.key(7), (500,), 0, 7)
  x = relaxed.conditional_gumbels(jax.random.key(8), logits, index, 4)
  assert x.shape == (4, 500, 7) and x.dtype == dtype
  np.testing.assert_array_equal(jnp.argmax(x, -1), jnp.broadcast_to(index, (4, 500)))


def test_conditional_gumbels_formula_and_constant_noise_gradient():
  rng, logits, num = jax.random.key(9), random_logits(9, (3, 5), 2.0), 6
  index = jnp.array([0, 4, 2])
  x = np.asarray(relaxed.conditional_gumbels(rng, logits, index, num), np.float64)
  theta = np.asarray(jax.nn.log_softmax(logits), np.float64)
  g = np.asarray(jax.random.gumbel(rng, (num, 3, 5)), np.float64)
  top = np.take_along_axis(g, np.broadcast_to(index[:, None], (num, 3, 1)), -1)
  want = -np.log(np.exp(-top) + np.exp(-theta) * np.exp(-g))
  want = np.where(np.arange(5) == np.asarray(index)[:, None], top, want)
  np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)
  w = random_logits(10, (num, 3, 5))
  got = jax.grad(lambda lg: jnp.sum(relaxed.conditional_gumbels(rng, lg, index, num) * w))(logits)
  want = jax.grad(lambda lg: jnp.sum(jax.nn.log_softmax(lg) * w))(logits)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_conditional_gumbels_reproduce_the_unconditional_law():
  """E_D E[softmax(x / tau) | D] = E softmax((theta + G) / tau), and E x = theta + gamma."""
  tau, logits = 0.5, jnp.array([0.5, -1.0, 1.5, 0.0])
  theta = jax.nn.log_softmax(logits)
  k_index, k_cond, k_free = jax.random.split(jax.random.key(11), 3)
  index = jax.random.categorical(k_index, logits, shape=(NUM_DRAWS,))
  x = relaxed.conditional_gumbels(k_cond, jnp.broadcast_to(logits, (NUM_DRAWS, V)), index, 1)[0]
  free = theta + jax.random.gumbel(k_free, (NUM_DRAWS, V))
  assert_means_agree(np.asarray(jax.nn.softmax(x / tau)), np.asarray(jax.nn.softmax(free / tau)))
  assert_means_agree(np.asarray(x), np.asarray(free))
  np.testing.assert_allclose(np.asarray(free).mean(0), theta + np.euler_gamma, atol=0.05)


def test_gumbel_rao_forward_and_gradient():
  rng, tau, num = jax.random.key(12), 0.5, 5
  logits, w = random_logits(12, (3, 2, 6)), random_logits(13, (3, 2, 6))
  out = relaxed.gumbel_rao(rng, logits, tau, num)
  k_hard, k_cond = jax.random.split(rng)
  index = jnp.argmax(logits + jax.random.gumbel(k_hard, logits.shape), -1)
  np.testing.assert_array_equal(out.index, index)
  np.testing.assert_array_equal(out.sample, jax.nn.one_hot(index, 6))
  got = jax.jit(jax.grad(lambda lg: jnp.sum(relaxed.gumbel_rao(rng, lg, tau, num).sample * w)))(
      logits)

  def manual(lg):
    x = relaxed.conditional_gumbels(k_cond, lg, index, num)
    return jnp.sum(jax.nn.softmax(x / tau).mean(0) * w)

  np.testing.assert_allclose(got, jax.grad(manual)(logits), rtol=1e-5, atol=1e-7)
  assert np.all(np.isfinite(got)) and np.abs(np.asarray(got)).max() > 1e-3


def test_gumbel_rao_is_rao_blackwellised_gumbel_softmax():
  """Same expected gradient as ST-GS, with lower variance."""
  logits, w, n = jnp.array([0.5, -1.0, 1.5, 0.0]), jnp.array([1.0, -2.0, 0.5, 3.0]), 10_000
  batch = jnp.broadcast_to(logits, (n, V))

  def per_row_grads(sample_fn, rng):
    return np.asarray(jax.grad(lambda lg: jnp.sum(sample_fn(rng, lg).sample * w))(batch))

  gs = per_row_grads(lambda r, lg: relaxed.gumbel_softmax(r, lg, 1.0), jax.random.key(14))
  gr = per_row_grads(lambda r, lg: relaxed.gumbel_rao(r, lg, 1.0, 8), jax.random.key(15))
  assert_means_agree(gr, gs)
  assert gr.var(0).sum() < 0.8 * gs.var(0).sum()


def test_vector_quantize_picks_nearest_codeword():
  z, codebook = random_logits(16, (4, 5, 3), 2.0), random_logits(17, (11, 3), 2.0)
  out = vqvae.vector_quantize(z, codebook)
  brute = np.argmin(((np.asarray(z)[..., None, :] - np.asarray(codebook)) ** 2).sum(-1), -1)
  assert out.index.dtype == jnp.int32
  np.testing.assert_array_equal(out.index, brute)
  np.testing.assert_array_equal(out.z_q, np.asarray(codebook)[brute])


def test_vector_quantize_gradients():
  z, codebook = random_logits(18, (6, 3)), random_logits(19, (5, 3))

  def grads(pick):
    return jax.grad(lambda zz, cb: pick(vqvae.vector_quantize(zz, cb)), argnums=(0, 1))(z, codebook)

  z_q = vqvae.vector_quantize(z, codebook).z_q
  dz, dcb = grads(lambda q: jnp.sum(q.z_q ** 3))
  np.testing.assert_allclose(dz, 3.0 * z_q ** 2, rtol=1e-6)
  np.testing.assert_array_equal(dcb, 0.0)
  dz, dcb = grads(lambda q: q.codebook_loss)
  np.testing.assert_array_equal(dz, 0.0)
  assert np.abs(np.asarray(dcb)).max() > 0
  dz, dcb = grads(lambda q: q.commitment_loss)
  np.testing.assert_array_equal(dcb, 0.0)
  np.testing.assert_allclose(dz, 2.0 * (z - z_q) / z.size, rtol=1e-5)


def test_vector_quantize_losses_by_hand():
  codebook = jnp.array([[0.0, 0.0], [2.0, 2.0], [-3.0, 1.0]])
  z = jnp.array([[0.5, -0.5], [1.5, 3.0], [-2.0, 0.0]])
  out = vqvae.vector_quantize(z, codebook)
  np.testing.assert_array_equal(out.index, [0, 1, 2])
  # Squared errors: 0.25 + 0.25, 0.25 + 1, 1 + 1, over 6 elements.
  np.testing.assert_allclose(out.codebook_loss, 3.75 / 6, rtol=1e-6)
  np.testing.assert_allclose(out.commitment_loss, 3.75 / 6, rtol=1e-6)


def ema_problem(n=12, num_codes=5, width=3):
  z = random_logits(20, (n, width))
  index = jnp.array([0, 1, 1, 3, 0, 1, 3, 3, 0, 1, 0, 3][:n])  # codes 2 and 4 unused
  return random_logits(21, (num_codes, width)), z, index


def test_vq_ema_init_reproduces_codebook():
  codebook = random_logits(22, (5, 3))
  ema = vqvae.vq_ema_init(codebook)
  _, new = vqvae.vq_ema_update(ema, jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32), decay=1.0)
  np.testing.assert_allclose(new, codebook, rtol=1e-6)


def test_vq_ema_decay_zero_gives_cluster_means():
  codebook, z, index = ema_problem()
  mask = np.ones(12, bool)
  mask[[0, 5]] = False
  ema, new = vqvae.vq_ema_update(vqvae.vq_ema_init(codebook), z, index, decay=0.0,
                               mask=jnp.asarray(mask))
  zn, idx = np.asarray(z), np.asarray(index)
  for code in (0, 1, 3):
    rows = (idx == code) & mask
    np.testing.assert_allclose(new[code], zn[rows].mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ema.counts[code], rows.sum())
  np.testing.assert_array_equal(np.asarray(ema.counts)[[2, 4]], 0.0)


def test_vq_ema_sharded_matches_whole_batch():
  codebook, z, index = ema_problem()
  mask = jnp.arange(12) % 5 != 0
  ema = vqvae.vq_ema_init(codebook)
  whole = vqvae.vq_ema_update(ema, z, index, decay=0.7, mask=mask)
  shards = jax.vmap(
      lambda zz, ii, mm: vqvae.vq_ema_update(ema, zz, ii, decay=0.7, mask=mm, axis_name='d'),
      axis_name='d')(z.reshape(2, 6, 3), index.reshape(2, 6), mask.reshape(2, 6))
  for i in range(2):
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], shards), whole, rtol=1e-6)


def test_restart_dead_codes_replaces_only_dead_codes():
  codebook, z, index = ema_problem()
  ema, _ = vqvae.vq_ema_update(vqvae.vq_ema_init(codebook), z, index, decay=0.0)
  rng, threshold = jax.random.key(23), 0.5
  new, new_ema, count = vqvae.restart_dead_codes(rng, codebook, ema, z, threshold=threshold)
  dead = np.asarray(ema.counts) < threshold
  np.testing.assert_array_equal(dead, [False, False, True, False, True])
  assert count.dtype == jnp.int32 and int(count) == 2
  np.testing.assert_array_equal(new[~dead], codebook[~dead])
  zn = np.asarray(z)
  picked = [int(np.flatnonzero((zn == np.asarray(new[c])).all(-1))[0]) for c in (2, 4)]
  assert picked[0] != picked[1]  # Distinct rows while the batch has at least V rows.
  np.testing.assert_array_equal(new_ema.counts[dead], threshold)
  np.testing.assert_allclose(new_ema.sums[dead], new[dead] * threshold, rtol=1e-6)
  np.testing.assert_array_equal(new_ema.sums[~dead], ema.sums[~dead])
  # The EMA codebook of the restarted state has the new rows.
  _, ema_codebook = vqvae.vq_ema_update(new_ema, z[:0], index[:0], decay=1.0)
  np.testing.assert_allclose(ema_codebook[dead], new[dead], rtol=1e-4)

  shards = jax.vmap(
      lambda zz: vqvae.restart_dead_codes(rng, codebook, ema, zz, threshold=threshold,
                                        axis_name='d'), axis_name='d')(z.reshape(2, 6, 3))
  for i in range(2):
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[i], shards), (new, new_ema, count))


@pytest.mark.parametrize('levels, size', [((8, 6, 5), 240), ((8, 5, 5, 5), 1000), ((3, 4), 12)])
def test_fsq_latent_codes_per_token(levels, size):
  """The decoder and code histograms see prod(levels) codes of d = len(levels) dims."""
  config = ml_collections.ConfigDict({'method': {'name': 'fsq', 'levels': levels}})
  latent = fsq.latent(config)
  assert (latent.num_codes, latent.code_dim, latent.encoder_head) == (size, len(levels),
                                                                      len(levels))
  assert not latent.autoregressive


def fsq_grid(levels) -> list[np.ndarray]:
  return [(np.arange(lv, dtype=np.float32) - lv // 2) / np.float32(lv // 2) for lv in levels]


@pytest.mark.parametrize('levels', [(8, 6, 5), (3, 4)])
def test_fsq_quantize_lands_on_grid_and_reaches_every_code(levels):
  z = random_logits(24, (2000, len(levels)), scale=20.0)
  codes = np.asarray(fsq.quantize(z, levels))
  for dim, grid in enumerate(fsq_grid(levels)):
    assert np.isin(codes[:, dim], grid).all()
    assert codes[:, dim].min() == -1.0 and codes[:, dim].max() == grid[-1]
  sweep = np.linspace(-4.0, 4.0, 25, dtype=np.float32)
  dense = np.stack(np.meshgrid(*[sweep] * len(levels)), -1).reshape(-1, len(levels))
  indices = fsq.codes_to_indices(fsq.quantize(jnp.asarray(dense), levels), levels)
  assert len(np.unique(np.asarray(indices))) == math.prod(levels)


@pytest.mark.parametrize('levels', [(8, 6, 5), (8, 5, 5, 5)])
def test_fsq_indices_and_codes_are_inverse(levels):
  size = math.prod(levels)
  indices = jnp.arange(size)
  codes = fsq.indices_to_codes(indices, levels)
  back = fsq.codes_to_indices(codes, levels)
  assert back.dtype == jnp.int32
  np.testing.assert_array_equal(back, indices)
  assert len(np.unique(np.asarray(codes), axis=0)) == size
  for dim, grid in enumerate(fsq_grid(levels)):
    assert np.isin(np.asarray(codes[:, dim]), grid).all()
  # Mixed radix, first dimension least significant.
  np.testing.assert_array_equal(codes[1] - codes[0], np.eye(len(levels))[0] / (levels[0] // 2))
  quantized = fsq.quantize(random_logits(25, (7, 3, len(levels)), 3.0), levels)
  roundtrip = fsq.indices_to_codes(fsq.codes_to_indices(quantized, levels), levels)
  np.testing.assert_array_equal(roundtrip, quantized)


def test_fsq_gradient_is_straight_through_round():
  levels, z = (8, 5, 4), random_logits(26, (10, 3), 1.5)
  w = random_logits(27, (10, 3))
  got = jax.grad(lambda zz: jnp.sum(fsq.quantize(zz, levels) * w))(z)
  want = jax.grad(lambda zz: jnp.sum(fsq.bound(zz, levels) * w / jnp.array([4.0, 2.0, 2.0])))(z)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert np.abs(np.asarray(got)).min() > 0


def test_fsq_bound_centres_the_grid():
  """z = 0 maps to code 0 for odd and even L; invalid levels are rejected."""
  for levels in [(8, 5), (4, 3)]:
    np.testing.assert_allclose(fsq.bound(jnp.zeros(2), levels), 0.0, atol=1e-6)
  with pytest.raises(ValueError):
    fsq.bound(jnp.zeros(2), (2, 5))
