"""Test configuration: tests import their helpers (tiny_models, isolated) from this folder."""

import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).parent))
# One thread per test process: `make test` runs two processes on two cores, and results are bit-for-bit the same as in
# the single-threaded subprocesses some tests start (see isolated.py).
torch.set_num_threads(1)
# Denormal floats make tiny random models crawl on some CPUs (steps several times slower).
torch.set_flush_denormal(True)
