"""npeff.models: model builders, the forward contract, parameter selection, checkpoints.

- ``forward_logits(model, batch) -> [B, C]``: batch dict, ``labels`` not passed to the model.
- ``select_parameters(model, include, exclude)`` / ``parameter_layout(...)``.
- ``build_model(model_cfg, hints)``: built-in models ``mlp``, ``cnn``, ``group_mlp``,
  ``tiny_bert``, ``hf_local``, ``torchvision``.
- ``save_checkpoint`` / ``read_checkpoint`` (``npeff.tasks.load_checkpoint`` rebuilds task + model).
"""

from npeff.models.checkpoint import (
    CHECKPOINT_NAME,
    read_checkpoint,
    resolve_checkpoint_path,
    save_checkpoint,
)
from npeff.models.core import (
    LABELS_KEY,
    accuracy,
    forward_logits,
    model_inputs,
    parameter_layout,
    predict_logits,
    select_parameters,
    set_trainable,
)
from npeff.models.registry import MODELS, build_model

__all__ = [
    "CHECKPOINT_NAME",
    "LABELS_KEY",
    "MODELS",
    "accuracy",
    "build_model",
    "forward_logits",
    "model_inputs",
    "parameter_layout",
    "predict_logits",
    "read_checkpoint",
    "resolve_checkpoint_path",
    "save_checkpoint",
    "select_parameters",
    "set_trainable",
]
