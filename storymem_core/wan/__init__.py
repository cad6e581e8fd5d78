"""Wan2.2 building blocks with the parameter names of the official checkpoints."""
