"""The paper's baselines in the trainer's interface (pure train steps and eval encodings).

`relaxed`: Gumbel-softmax and Gumbel-Rao (GR-MCK), AR and NA encoders.
`quantized`: VQ-VAE and FSQ. `ppo`: a clipped-ratio policy-gradient encoder.
"""
