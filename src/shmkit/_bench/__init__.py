"""Benchmarks behind ``shmkit bench``: shmkit and its peers measured in the same run."""
