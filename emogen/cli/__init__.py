"""The `emogen` command line."""
