"""Checking and measuring cnnlab on this machine.

- :mod:`cnnlab.tools.verify`: ``cnnlab verify``, every op forward and backward against float64
  references, finite differences and PyTorch, at every kernel level this CPU runs;
- :mod:`cnnlab.tools.bench`: ``cnnlab bench``, cnnlab and PyTorch side by side.
"""
