"""ONNX export of YOLOX models (decoded and end-to-end graphs), parity checks, packing of a model dir."""
