"""Inference shared by training validation, evaluation, the CLI and the service (numpy only, no torch).

    from cvpipe.inference.predictor import Predictor       # ONNX Runtime, packed model dir
    from cvpipe.inference.images import decode_image       # untrusted bytes -> BGR uint8 (ImageDecodeError)
    from cvpipe.inference.processing import letterbox, postprocess
"""
