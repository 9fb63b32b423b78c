"""What the tests and the benchmarks share, importable without pytest: the real mmsegmentation as the
independent reference (`mmseg_reference`), the tolerances by dtype (`tolerances`) and narrow versions of the
shipped models (`small_models`). Not used at run time."""
