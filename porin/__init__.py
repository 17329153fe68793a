"""Porin: a Cilium-like CNI datapath for Linux in Python and eBPF."""

__version__ = "0.1.0"
