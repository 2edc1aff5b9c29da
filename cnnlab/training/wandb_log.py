"""Optional Weights & Biases logging for ``cnnlab train --wandb``.

The run's config and every metrics record (step and epoch) also go to W&B.
``wandb`` is imported only when asked for; ``WANDB_MODE=offline`` works (the run
is written under ``RUN/wandb/`` and can be synced later with ``wandb sync``).
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.errors import CnnlabError


class WandbLogger:
    """Mirror a training run to Weights & Biases.

    Args:
        config: the resolved training config (a dict), shown as the W&B run's config.
        run_dir: the cnnlab run folder; W&B writes its files under it.
        project: the W&B project.
        name: the W&B run name.
        run_id: the W&B run id to continue (when resuming), or None for a new one.
    """

    def __init__(self, config: dict, run_dir: Path, project: str, name: str,
                 run_id: str | None = None):
        try:
            import wandb
        except ImportError:
            raise CnnlabError("--wandb needs the wandb package: pip install 'cnnlab[wandb]'"
                              ) from None
        self._wandb = wandb
        options = {"project": project, "name": name, "config": config, "dir": str(run_dir)}
        if run_id is not None:
            options.update(id=run_id, resume="allow")
        try:
            self.run = wandb.init(**options)
        except Exception as error:  # noqa: BLE001 - wandb raises many kinds; keep one line
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CnnlabError(f"Weights & Biases did not start: {message} "
                              "(try WANDB_MODE=offline, or run without --wandb)") from None
        self.run_id = getattr(self.run, "id", None)

    def log(self, record: dict) -> None:
        """Log one metrics record; W&B's step axis is cnnlab's global step."""
        values = {key: value for key, value in record.items()
                  if key not in ("kind", "step", "time") and isinstance(value, (int, float))}
        prefix = "train" if record.get("kind") == "step" else "epoch"
        self.run.log({f"{prefix}/{key}": value for key, value in values.items()},
                     step=int(record["step"]))

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)
