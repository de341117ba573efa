"""The autoregressive code prior over a trained run's codes (`python -m daps_jax.prior`)."""
