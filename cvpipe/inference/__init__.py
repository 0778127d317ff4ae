"""Inference with a packed model (ONNX Runtime, numpy only, no torch): the Predictor used by evaluation, the CLI
and the service, and the matcher that compares a prediction with a reference. Pixels, letterbox and decoding
come from cvpipe.vision.

    from cvpipe.inference.predictor import Predictor       # ONNX Runtime, packed model dir
"""
