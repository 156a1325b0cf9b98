"""The asv suite (``benchmark_dir`` in asv.conf.json): ``common`` holds the shapes, inputs, timers
and losses every benchmark shares; ``bench_loss``, ``bench_scaling`` and ``bench_cuda`` group the
benchmarks by area. asv imports this package as ``benchmarks``, so its modules import each other
relatively."""
