"""Benchmarks of dicebench (docs/benchmarks.md).

``benchmarks/benchmarks/`` is the asv suite; beside it, the tools that are not benchmarks:
``selections`` (which benchmarks each job runs), ``asv_machine`` (a stable machine name),
``results`` (asv's results as pandas), ``targets`` (the fused path's targets against MONAI),
``memory_gate`` (CI's peak-memory gate), ``gpu_compile`` (every Triton kernel compiled without a
GPU) and ``gpu_check`` (the CUDA checks on a machine with one).
"""
