"""The `cvpipe` command line."""
