//! Benchmark harness (filled in by the benchmark change).
fn main() {}
