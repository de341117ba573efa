"""Every method through the trainer's interface, and properties of the baselines' steps."""

import functools
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from daps_jax import build
from daps_jax import config_lib
from daps_jax import latents
from daps_jax import methods
from daps_jax import parallel
from daps_jax.evaluation import step as eval_step_lib
from daps_jax.methods import ppo
from daps_jax.methods import relaxed
from daps_jax.methods import vqvae
from tests import helpers


def setup(method: str, **method_fields):
  config = helpers.tiny_config(method)
  config.method.update(method_fields)
  config_lib.validate(config)
  run = build.assemble(config, bn_axis_name=parallel.AXIS)
  return config, run.networks, run.method, run.initial_state()


def batch(n=8, seed=0):
  return {'inputs': np.asarray(helpers.random_images(n, (28, 28, 1), seed=seed))}


@pytest.mark.parametrize('method', methods.NAMES)
def test_each_method_trains_two_steps_traces_once_and_evaluates(method):
  config, nets, meth, state = setup(method)
  chex.clear_trace_counter()  # The counter is keyed by the wrapper, shared by the parameters.
  p_step = parallel.pmap_step(meth.train_step, donate_state=True, max_traces=1)
  state = parallel.replicate(state)
  for i in range(2):
    state, metrics = p_step(state, parallel.shard(batch(seed=i)), jax.random.key(0))
  metrics = {k: float(v[0]) for k, v in jax.device_get(metrics).items()}
  assert int(parallel.unreplicate(state.step)) == 2
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  assert metrics['decoder/log_p'] < 0 and metrics['loss/decoder'] > 0
  assert metrics['grad_norm/encoder'] > 0

  p_eval = parallel.pmap_step(eval_step_lib.eval_step, networks=nets, encode=meth.encode,
                              spec=build.assemble(config).spec)
  images = batch(16, seed=5)
  sums, recon = p_eval(state, parallel.shard({**images, 'mask': np.ones(16, bool)}),
                       jax.random.key(1))
  assert recon.shape[-3:] == (28, 28, 1)
  assert int(sums['code_counts'][0].sum()) == 16 * config.model.num_tokens
  deterministic = method in ('vqvae', 'fsq')  # No analytic q(z|x): no KL, no ELBO.
  assert ('kl' in sums) == (not deterministic)
  assert (meth.beta_final is None) == deterministic


@pytest.mark.parametrize('method', methods.NAMES)
def test_bits_and_parameter_budget_match_daps(method):
  """Same L and codes per token (FSQ: prod(levels) ~ V) and, within 10%, the same
  number of parameters (VQ/FSQ heads are narrower than V logits; FSQ's decoder
  projects d dims instead of a [V, E] table; PPO adds a small value network)."""
  config = helpers.load_config('mnist', f'method={method}')
  daps = helpers.load_config('mnist', 'method=daps')
  bits = config_lib.bits_per_input(config)
  assert bits == pytest.approx(64.0) if method != 'fsq' else bits == pytest.approx(8 * np.log2(240))
  counts, reference = build.param_counts(config), build.param_counts(daps)
  assert abs(counts['total'] - reference['total']) <= 0.1 * reference['total'], counts
  assert 'bits per input' in build.describe(config, counts)


def test_relaxed_ar_rollout_matches_teacher_forcing_and_carries_gradient():
  """The hard path of the relaxed rollout scores like teacher forcing, and the
  encoder's code embeddings (used only as the next step's input) get gradient."""
  encoder, params, images = helpers.encoder_setup('ar', vocab_size=5, num_tokens=4, batch=6,
                                                  seed=0)
  relax = functools.partial(relaxed.gumbel_softmax, tau=0.7)
  sample = latents.relaxed_latents(encoder, params, images, jax.random.key(3), relax)
  chex.assert_trees_all_equal(sample.codes, jax.nn.one_hot(sample.tokens, 5))
  scores = latents.score_latents(encoder, params, images, sample.tokens[:, None])
  np.testing.assert_allclose(sample.log_q, scores.log_q[:, 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sample.kl, scores.kl[:, 0], rtol=1e-5, atol=1e-5)

  weights = jax.random.normal(jax.random.key(4), sample.codes.shape)

  def loss(p):
    r = latents.relaxed_latents(encoder, p, images, jax.random.key(3), relax)
    return jnp.sum(r.codes * weights)

  grads = jax.grad(loss)(params)['params']
  code_rows = grads['token_embed']['embedding'][:5]  # Row 5 is the start token.
  assert float(jnp.abs(code_rows).max()) > 1e-6


def test_relaxed_na_gradient_reaches_encoder():
  config, nets, meth, state = setup('gumbel_na')
  g = jax.grad(lambda p: -nets.likelihood.log_prob(nets.decoder.apply(
      {'params': state.decoder.params},
      latents.relaxed_latents(nets.encoder, {'params': p}, jnp.asarray(batch()['inputs']),
                              jax.random.key(0),
                              functools.partial(relaxed.gumbel_softmax, tau=1.0)).codes),
      jnp.asarray(batch()['inputs'])).sum())(state.encoder.params)
  assert optax.tree.norm(g) > 0


def test_vq_step_updates_codebook_only_through_its_loss():
  """Without EMA the codebook (the decoder's embedding) moves; with EMA it equals
  the EMA statistics after the step and the optimiser never moves it."""
  _, _, meth, state = setup('vqvae')
  new, _ = jax.jit(meth.train_step)(state, batch(), jax.random.key(0))
  assert not np.allclose(vqvae.codebook(new.decoder.params),
                         vqvae.codebook(state.decoder.params))

  _, _, meth, state = setup('vqvae', ema_decay=0.5)
  new, metrics = jax.jit(meth.train_step)(state, batch(), jax.random.key(0))
  ema = new.aux['ema']
  n = ema.counts.sum()
  smoothed = (ema.counts + 1e-5) / (n + ema.counts.shape[0] * 1e-5) * n
  np.testing.assert_allclose(vqvae.codebook(new.decoder.params),
                             ema.sums / smoothed[:, None], rtol=1e-5, atol=1e-6)
  assert 'vq/restarted' not in metrics


def test_vq_dead_code_restarts_replace_unused_codes():
  _, _, meth, state = setup('vqvae', ema_decay=0.5, restart_threshold=0.4)
  new, metrics = jax.jit(meth.train_step)(state, batch(), jax.random.key(0))
  # EMA counts start at 1; decay 0.5 halves the count of a code a batch does not use,
  # so a code unused in both steps is at 0.25 < 0.4 after the second and restarts.
  new, metrics = jax.jit(meth.train_step)(new, batch(seed=1), jax.random.key(0))
  assert float(metrics['vq/restarted']) >= 1


def test_ppo_behaviour_policy_lags_one_step_and_kl_coef_adapts():
  _, _, meth, state = setup('ppo')
  chex.assert_trees_all_equal(state.aux['behaviour'], state.encoder.params)
  step = jax.jit(meth.train_step)
  s1, m1 = step(state, batch(), jax.random.key(0))
  np.testing.assert_allclose(m1['ppo/ratio'], 1.0, rtol=1e-5)  # Behaviour == policy at step 0.
  chex.assert_trees_all_equal(s1.aux['behaviour'], state.encoder.params)
  s2, m2 = step(s1, batch(seed=1), jax.random.key(0))
  chex.assert_trees_all_equal(s2.aux['behaviour'], s1.encoder.params)
  assert float(m2['ppo/kl']) > 0  # Samples now come from the previous parameters.
  assert float(ppo.adapt_kl_coef(1.0, 0.02, 0.01)) == 2.0
  assert float(ppo.adapt_kl_coef(1.0, 0.005, 0.01)) == 0.5
  assert float(ppo.adapt_kl_coef(1.0, 0.01, 0.01)) == 1.0


def test_ppo_kl_coefficient_stays_bounded_over_hundreds_of_steps():
  """Unbounded halving reached exactly 0 by step ~150 of a quickstart, after which
  doubling kept it 0; the coefficient must stay in [1e-3, 1e3] and reach the floor."""
  _, _, meth, state = setup('ppo')
  step = jax.jit(meth.train_step)
  coefs = []
  for i in range(300):
    state, metrics = step(state, batch(seed=i % 4), jax.random.key(0))
    coefs.append(float(metrics['ppo/kl_coef']))
  coefs.append(float(state.aux['kl_coef']))
  assert min(coefs) >= ppo.KL_COEF_MIN and max(coefs) <= ppo.KL_COEF_MAX, (min(coefs),
                                                                           max(coefs))
  assert min(coefs) == pytest.approx(ppo.KL_COEF_MIN)  # It was driven down to the floor.
  assert float(ppo.adapt_kl_coef(ppo.KL_COEF_MIN, 0.0, 0.01)) == pytest.approx(ppo.KL_COEF_MIN)
  assert float(ppo.adapt_kl_coef(ppo.KL_COEF_MAX, 1.0, 0.01)) == pytest.approx(ppo.KL_COEF_MAX)


def test_vimco_step_trains_the_encoder_by_its_surrogate():
  """One VIMCO step: the decoder takes DAPS's step, the encoder moves, the logged bound
  is the K-sample bound of the samples' log weights."""
  _, _, meth, state = setup('vimco')
  new, metrics = jax.jit(meth.train_step)(state, batch(), jax.random.key(0))
  assert float(metrics['grad_norm/encoder']) > 0
  assert not np.allclose(jax.tree.leaves(new.encoder.params)[0],
                         jax.tree.leaves(state.encoder.params)[0])
  np.testing.assert_allclose(metrics['loss/policy'], -metrics['vimco/bound'], rtol=1e-6)
  assert 1 / 4 <= float(metrics['vimco/max_weight']) <= 1.0  # K = 4 in the tiny config.
  assert int(new.step) == 1


def test_fsq_step_feeds_grid_codes_and_trains_encoder():
  config, nets, meth, state = setup('fsq')
  images = jnp.asarray(batch()['inputs'])
  enc = meth.encode(state, images, jax.random.key(0), networks=nets)
  assert int(enc.tokens.max()) < 240 and int(enc.tokens.min()) >= 0
  new, metrics = jax.jit(meth.train_step)(state, batch(), jax.random.key(0))
  assert float(metrics['grad_norm/encoder']) > 0
  assert not np.allclose(jax.tree.leaves(new.encoder.params)[0],
                         jax.tree.leaves(state.encoder.params)[0])


_SHARDED_SCRIPT = r'''
import sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
from daps_jax import build, parallel
from tests import helpers
assert jax.local_device_count() == 2, jax.devices()

def run(method, devices):
  method, _, solver = method.partition(':')
  config = helpers.tiny_config(method)
  if solver:  # DAPS's bisection: the ESS in each halving is a mean over both devices.
    config.method.dual_solver = solver
  if method == 'vqvae':  # The optional EMA codebook and restarts: statistics summed over devices.
    config.method.ema_decay, config.method.restart_threshold = 0.5, 0.4
  run = build.assemble(config, bn_axis_name=parallel.AXIS)
  state = parallel.replicate(run.initial_state(), devices)
  step = parallel.pmap_step(run.method.train_step, devices=devices)
  rng = np.random.default_rng(0)
  for _ in range(3):
    images = (rng.random((8, 28, 28, 1)) > 0.5).astype(np.float32)
    state, metrics = step(state, parallel.shard({'inputs': images}, len(devices)),
                          jax.random.key(5))
  return jax.device_get(jax.tree.map(lambda x: x[0], (state, metrics)))

for method in sys.argv[2:]:
  (s1, m1), (s2, m2) = run(method, jax.devices()[:1]), run(method, jax.devices()[:2])
  for k in m1:
    np.testing.assert_allclose(m1[k], m2[k], rtol=2e-4, atol=1e-5, err_msg=f'{method} {k}')
  # Adam's step lr m / (sqrt(v) + eps) turns float noise in a gradient near zero into up
  # to a whole step (1e-3; grmck_na has one such weight, off by 8.7e-5), so parameters get
  # atol 1e-4, a tenth of a step. The moments mu and nu, linear in the gradients and their
  # squares, hold the gradients themselves to atol 1e-5.
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(s1)[0], jax.tree.leaves(s2)):
    name = jax.tree_util.keystr(path)
    atol = 1e-4 if '.params' in name and 'opt_state' not in name else 1e-5
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=atol, err_msg=f'{method} {name}')
  if method == 'vqvae':
    assert m1['vq/restarted'] > 0, m1  # The restart path ran, and ran identically.
  print('SHARDED_OK', method)
'''


def test_two_devices_equal_one_device_for_the_baselines():
  """Every leaf of the state and every metric after 3 steps, 2 fake CPU devices vs 1."""
  names = ['gumbel', 'grmck_na', 'vqvae', 'fsq', 'ppo', 'vimco', 'daps:bisection']
  env = helpers.cpu_env(2)
  result = subprocess.run([sys.executable, '-c', _SHARDED_SCRIPT, helpers.REPO, *names],
                          env=env, capture_output=True, text=True, timeout=1800)
  for method in names:
    assert f'SHARDED_OK {method}' in result.stdout, result.stdout + result.stderr[-5000:]
