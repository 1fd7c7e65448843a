"""C kernels for the CPU hot path (built on first use with the system compiler; see build.py)."""
