"""Side-by-side benchmarks: our pipeline against reference implementations."""
