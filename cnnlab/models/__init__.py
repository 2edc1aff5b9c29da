"""Models from a name or a spec string, and what is inside them.

- :mod:`cnnlab.models.spec`: the named models (``mlp``, ``cnn``, ``cnn-bn``) and user specs
  (docs/models.md) parsed, planned (every shape, no weights allocated) and built into an
  ``nn.Sequential``; its public names are re-exported here (``cnnlab.models.build_model``).
- :mod:`cnnlab.models.summary`: per-layer output shape, parameters and FLOPs of a built model.

Both work out shapes with the layers' own ``output_shape`` formulas (cnnlab/nn/layers.py).
"""

from cnnlab.models.spec import (
    MODEL_NAMES,
    NAMED_SPECS,
    LayerPlan,
    build_model,
    plan_model,
    resolve_spec,
    spec_num_classes,
    spec_tokens,
)

__all__ = ["MODEL_NAMES", "NAMED_SPECS", "LayerPlan", "build_model", "plan_model", "resolve_spec",
           "spec_num_classes", "spec_tokens"]
