"""Porin's C datapath, shipped as package data and compiled by the agent with bcc."""

from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
"""Directory holding bpf_*.c and lib/*.h."""
