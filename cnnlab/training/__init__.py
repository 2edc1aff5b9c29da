"""Training a model and what a run leaves behind (the engine of ``cnnlab train``).

- :mod:`~cnnlab.training.config`: ``TrainConfig``, its defaults, and config files;
- :mod:`~cnnlab.training.trainer`: the training loop (``run_training``, ``Trainer``), resume,
  interruption, the report and live view while it runs;
- :mod:`~cnnlab.training.evaluation`: the one evaluation and inference loop (loss, accuracy,
  confusion), used by training, ``evaluate``, ``predict`` and the figures;
- :mod:`~cnnlab.training.checkpoint`: ``.npz`` checkpoints (no pickle), loading a model back;
- :mod:`~cnnlab.training.interop`: state_dict keys and shapes against a model, safetensors files;
- :mod:`~cnnlab.training.runs`: the run folder (its file names, ``metrics.jsonl``, versions);
- :mod:`~cnnlab.training.distributed`: ranks and collectives under torchrun;
- :mod:`~cnnlab.training.wandb_log`: optional Weights & Biases logging.

Nothing is imported here, so ``import cnnlab.training.config`` stays light.
"""
