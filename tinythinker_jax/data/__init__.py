"""Benchmark questions, teacher records, splits and the built-in toy world."""
