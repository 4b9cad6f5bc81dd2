"""Entry points: the ``e2x`` command and the demo. The top layer: it may import the benchmarks,
the flows and the library; nothing imports it."""
