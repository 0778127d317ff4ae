"""The pipeline's steps, one module each; every module here registers itself on import."""
