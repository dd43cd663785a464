"""Video benchmarks: multi-view Kinetics testing, FLOP reports."""
