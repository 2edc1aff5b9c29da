"""Layers with PyTorch names (see docs/architecture.md)."""
