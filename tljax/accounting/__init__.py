"""Accounting: exact FLOPs and memory of compiled steps, analytic MACs, energy, and the edge
device memory model."""
