"""Evaluation on the full validation split.

  step      the pure eval step: masked metric sums and reconstructions of a batch
  loop      `Evaluator`: the compiled step and FID scorer of a run, run over the split
  outputs   `Result`, its files (eval_<step>.json, figures, code histograms), summaries
  run       `evaluate_run`: restore a run's config and checkpoint and evaluate it
            (behind `python -m daps_jax.evaluate`)

The training loop and `evaluate_run` use the same `Evaluator` and
`outputs.write`, so a checkpoint evaluated afterwards gives the numbers the run
logged at that step.
"""
