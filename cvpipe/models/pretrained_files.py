"""Where the pretrained weights shipped with cvpipe lie (torch-free: model_eval and the service import it).

One locator for training's start (`pretrained: nano-onnx`) and model_eval's pretrained baseline, so both
find the same file from any working directory.
"""

from __future__ import annotations

from pathlib import Path

NANO_ONNX = Path("weights") / "yolox_nano" / "yolox_nano.onnx"  # Megvii's YOLOX-Nano export, relative


def nano_onnx_candidates() -> list[Path]:
    """Where the shipped YOLOX-Nano ONNX is looked for, in this order:

    1. the working directory (`./weights/...`): a project run from its own root may bring its own copy;
    2. the source checkout the package runs from (the repository root above `cvpipe/`), so a run from any
       other directory of an editable install still finds the shipped file;
    3. inside the installed package (`cvpipe/weights/...`), for a wheel that bundles it.
    """
    package = Path(__file__).resolve().parents[1]  # .../cvpipe
    return [Path.cwd() / NANO_ONNX, package.parent / NANO_ONNX, package / NANO_ONNX]


def find_nano_onnx() -> Path:
    """The shipped YOLOX-Nano ONNX: the first existing file of `nano_onnx_candidates()`."""
    candidates = nano_onnx_candidates()
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("YOLOX-Nano ONNX weights not found; looked at " + ", ".join(map(str, candidates)) +
                            ". Run from the repository root or give pretrained as a path")
