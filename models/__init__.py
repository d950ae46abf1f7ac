"""Discrete Interpolants as a PyTorch library: schedulers, path, losses, backbone, samplers, trainer."""
