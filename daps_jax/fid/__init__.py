"""Fréchet Inception Distance: the FID InceptionV3 in Flax, its weights, and feature statistics."""
