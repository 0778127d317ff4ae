"""Load tests of an HTTP service over loopback: sequential and concurrent phases, latency statistics."""
