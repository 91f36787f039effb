"""The end-to-end benchmark (`make bench`): see bench/RESULTS.md and bench/run.py."""
