"""The cvpipe model service: BentoML service (service.py), Bento build / export (bento.py), a managed
`bentoml serve` subprocess for tests, model_test and the CLI (process.py)."""
