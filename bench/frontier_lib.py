"""The pure parts of `bench.k_frontier`: the self-normalisation bias by enumeration
and Monte Carlo, and the fixed-budget reading of learning curves (numpy only).

Latent space: N outcomes (sequences) with a full-table categorical q. DAPS's
weighted-MLE gradient with respect to q's logits, from K samples z_k ~ q, is
g_K = q - sum_k w_k e_{z_k}, w the self-normalised weights of the target
q* proportional to q^(eta/(eta+beta)) exp(r/(eta+beta)); the exact gradient of
KL(q* || q) is g = q - q*. So the bias E g_K - g = q* - E[sum_k w_k e_{z_k}].
"""

import itertools

import numpy as np

BIAS_KS = (2, 4, 8, 16, 32, 64)
BIAS_ETAS = (0.1, 1.0, 10.0)
BIAS_BETA = 0.5


def target(log_q: np.ndarray, rewards: np.ndarray, eta: float, beta: float) -> np.ndarray:
  """q* proportional to q^(eta/(eta+beta)) exp(r/(eta+beta)), over all N outcomes."""
  logits = (eta * log_q + rewards) / (eta + beta)
  p = np.exp(logits - logits.max())
  return p / p.sum()


def weighted_estimate(samples: np.ndarray, log_q: np.ndarray, rewards: np.ndarray, eta: float,
                      beta: float) -> np.ndarray:
  """sum_k w_k e_{z_k} for each row of samples [M, K] of outcome indices -> [M, N]."""
  logits = (rewards[samples] - beta * log_q[samples]) / (eta + beta)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.zeros((samples.shape[0], log_q.size))
  np.add.at(out, (np.arange(samples.shape[0])[:, None], samples), w)
  return out


def exact_expectation(k: int, log_q, rewards, eta, beta) -> np.ndarray:
  """E[sum_k w_k e_{z_k}] over all N^k ordered tuples, weighted by their probability."""
  n = log_q.size
  tuples = np.array(list(itertools.product(range(n), repeat=k)))
  prob = np.exp(log_q[tuples].sum(-1))
  return (prob[:, None] * weighted_estimate(tuples, log_q, rewards, eta, beta)).sum(0)


def bias_table(draws: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  n = 9  # V^L with V = 3, L = 2.
  log_q = np.log(rng.dirichlet(np.ones(n)))
  rewards = rng.normal(scale=3.0, size=n)
  rows = []
  for eta, k in itertools.product(BIAS_ETAS, BIAS_KS):
    q_star = target(log_q, rewards, eta, BIAS_BETA)
    scale = np.linalg.norm(q_star - np.exp(log_q))  # |g|, the exact gradient's norm.
    estimates = np.concatenate([
        weighted_estimate(rng.choice(n, size=(chunk, k), p=np.exp(log_q)), log_q, rewards, eta,
                          BIAS_BETA)
        for chunk in np.diff(np.linspace(0, draws, 11).astype(int))])
    mean = estimates.mean(0)
    # |mean - q*|^2 overestimates |bias|^2 by the Monte-Carlo variance, sum_n var_n / M.
    noise = np.sum(estimates.var(0) / draws)
    squared = max(np.sum((mean - q_star) ** 2) - noise, 0.0)
    row = {'eta': eta, 'k': k, 'relative_bias_mc': float(np.sqrt(squared) / scale),
           'mc_stderr': float(np.sqrt(noise) / scale)}
    if k <= 4:
      exact = exact_expectation(k, log_q, rewards, eta, BIAS_BETA)
      row['relative_bias_exact'] = float(np.linalg.norm(exact - q_star) / scale)
    rows.append(row)
  return {'latent_space': 'V^L = 3^2 = 9 sequences, full-table categorical q (Dirichlet(1))',
          'rewards': 'N(0, 3^2) per sequence', 'beta': BIAS_BETA, 'draws': draws, 'seed': seed,
          'rows': rows}


def frontier(curves: dict, sec_per_step: dict, budgets: list[float]) -> dict:
  """Per K: each metric at every eval step, and at fixed budgets of seconds (the last
  evaluation within the budget; None when even the first one is beyond it)."""
  out = {}
  for k, by_metric in curves.items():
    seconds = sec_per_step[k]
    row = {'sec_per_step': seconds}
    for key, by_step in by_metric.items():
      steps = sorted(by_step)
      means = [float(np.mean(by_step[s])) for s in steps]
      row[key] = {'steps': steps, 'mean': means}
      within = [[m for s, m in zip(steps, means) if s * seconds <= b] for b in budgets]
      row[f'{key}@budget'] = [w[-1] if w else None for w in within]
    out[k] = row
  return out
