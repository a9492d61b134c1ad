"""Every benchmark, in one package (rank 6: it may import the whole library but the CLI).

- ``camid bench`` (``suite``): speed-ups against their baselines, one module per section
  (``sample``, ``equalise``, ``stack``, ``prnu``, ``gpu``, ``backends``); ``make bench``.
- Measurements behind BENCHMARKS.md's tables, each a module run as
  ``python -m camid.bench.<name>``: ``real_bench`` (``make real-bench``), ``open_set_loco``
  (``make bench-open-set``), ``dresden_prnu`` (``make prnu-dresden``), ``external_ablation``,
  ``jpeg_grid_phase``, ``prnu_cluster_synthetic``, ``prnu_match_real``, ``prnu_strength`` and
  the ``jpeg_phase`` experiment.

Nothing in the library imports this package; helpers that only benchmarks use live here.
"""
