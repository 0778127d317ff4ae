"""Finding label errors: out-of-fold predictions, one ranked queue per error type, a self-test with injected
errors that says how far to trust the queues, an HTML report, and a round trip through Label Studio / CVAT.

See docs/labels.md. Modules: boxes (flat box tables and vectorised joins), oof (out-of-fold predictions),
score (the queues), inject and selftest (the measured hit rate), apgain, report, labelstudio, cvat, corrections.
"""
