"""The end-to-end benchmark (`make bench`, `make bench-quick`) and the older micro-benchmarks.

`python -m bench --help` runs the harness; docs/performance.md says what it measures and how to read it."""
