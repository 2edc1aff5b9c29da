"""Seeing inside a model and its training run.

- :mod:`cnnlab.viz.plots`: matplotlib figures (filters, feature maps, saliency, learning
  curves, confusion, mistakes), and ``Run``, a run folder loaded once for them;
- :mod:`cnnlab.viz.report`: the self-contained HTML report of a run;
- :mod:`cnnlab.viz.explorer`: the explorer page (every layer's numbers in the browser) and the
  live view the trainer keeps;
- :mod:`cnnlab.viz.notebook`: figures inline inside a Jupyter kernel.

Nothing is imported here: matplotlib loads only when a figure is drawn.
"""
