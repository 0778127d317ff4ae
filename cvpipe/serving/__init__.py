"""The cvpipe model service.

service.py    the BentoML service (typed endpoints; builds its engine from the settings in Detector.__init__)
admission.py  ASGI admission control in front of it: body limits and deadline, one upload budget, slots
engine.py     DetectorEngine (packed model + predictor + decode budget), what the endpoints call
errors.py     RequestRefused: the one way a request is refused (a 4xx, or 503 when busy)
settings.py   ServiceSettings: every knob, from CVPIPE_* variables or a file
swap.py       model updates without interruption; bentoml_fixes.py: three fixes for BentoML 1.4
bento.py      Bento build / export; process.py: a managed `bentoml serve` for tests, model_test and the CLI
"""
