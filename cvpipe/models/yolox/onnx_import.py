"""Load Megvii's YOLOX-Nano ONNX export (BN folded) into our fused nano model.

The export traces the model's forward, so its Conv nodes in graph (topological) order are the convolutions in
the order our forward runs them. We record that order with forward hooks on a dummy pass and pair them up,
checking every weight/bias shape and the conv hyper-parameters (stride, groups, kernel).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from .model import YOLOX, build_yolox


def conv_execution_order(model: nn.Module, size: tuple[int, int] = (64, 64)) -> list[tuple[str, nn.Conv2d]]:
    """(name, conv) for every Conv2d in the order a forward pass calls them."""
    order: list[tuple[str, nn.Conv2d]] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: order.append((name, mod)))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            model(torch.zeros(1, 3, *size))
            model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return order


def _onnx_convs(path: Path):
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.input[1] not in inits:
            raise ValueError(f"ONNX Conv {node.name} has a non-constant weight; not a plain export")
        w = numpy_helper.to_array(inits[node.input[1]])
        b = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
        convs.append((node.name, w, b, attrs))
    return convs


def load_nano_from_onnx(path: str | Path, num_classes: int = 80) -> YOLOX:
    """Fused YOLOX-Nano carrying the weights of a Megvii nano ONNX export (eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    model = build_yolox("nano", num_classes, fused=True)
    ours = conv_execution_order(model)
    theirs = _onnx_convs(path)
    if len(ours) != len(theirs):
        raise ValueError(f"{path.name}: {len(theirs)} Conv nodes, fused nano has {len(ours)} convs; "
                         "not a YOLOX-Nano export (or a different head)")
    with torch.no_grad():
        for (name, conv), (node, w, b, attrs) in zip(ours, theirs):
            bias = cast(torch.Tensor, conv.bias)  # every conv of the fused model carries a bias
            problems = []
            if tuple(w.shape) != tuple(conv.weight.shape):
                problems.append(f"weight {tuple(w.shape)} vs {tuple(conv.weight.shape)}")
            if b is None or tuple(b.shape) != tuple(bias.shape):
                problems.append(f"bias {None if b is None else tuple(b.shape)} vs {tuple(bias.shape)}")
            if list(attrs.get("strides", [1, 1])) != list(conv.stride) or attrs.get("group", 1) != conv.groups:
                problems.append(f"stride/group {attrs.get('strides')}/{attrs.get('group')} "
                                f"vs {conv.stride}/{conv.groups}")
            if problems:
                raise ValueError(f"ONNX node {node} does not fit {name}: " + "; ".join(problems))
            conv.weight.copy_(torch.from_numpy(np.array(w, dtype=np.float32)))
            bias.copy_(torch.from_numpy(np.array(b, dtype=np.float32)))
    return model.eval()
