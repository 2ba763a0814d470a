"""Which variables train: the backbone's frozen and unfrozen phases (train.freeze_epochs, train.unfreeze) and the
set of trainable variables a traced training step is built over (info/DESIGN.md#training).
"""
from __future__ import annotations

import backbone


def all_layers(model):
    """Every layer of a model, nested sub-models included."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out += all_layers(layer)
    return out


def backbone_layers(model):
    return [layer for layer in all_layers(model) if layer.name.startswith(("bb_conv_", "bb_bn_"))]


def set_backbone_phase(model, cfg, frozen: bool):
    """Frozen: every backbone conv/BN untrainable (Keras runs untrainable BN in inference mode). Unfrozen: the
    four output convs with their BNs (faithful) or, with train.unfreeze=all, the whole backbone."""
    for layer in backbone_layers(model):
        idx = int(layer.name.rsplit("_", 1)[1])
        if frozen:
            layer.trainable = False
        else:
            layer.trainable = cfg.train.unfreeze == "all" or idx in backbone.OUTPUT_CONVS


def trainable_vars(model):
    """The model's trainable variables plus the ALB log-variances, each once."""
    seen, out = set(), []
    for v in list(model.trainable_variables) + list(model.alb.trainable_variables):
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out
