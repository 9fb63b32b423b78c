"""What the tests and the benchmarks share, importable without pytest: the real mmsegmentation as the
independent reference (`mmseg_reference`) and the tolerances by dtype (`tolerances`). Not used at run time."""
