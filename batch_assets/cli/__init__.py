"""``batch-infer``: the runner (a library the tests and benchmarks call) and the command line."""
