"""cvpipe: a detection model's whole life, from raw data to a REST service, as a versioned pipeline."""

__version__ = "0.1.0"
