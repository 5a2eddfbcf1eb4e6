"""Benchmarks: offline quality, serving latency, ingest throughput."""
