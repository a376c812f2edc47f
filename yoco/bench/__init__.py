"""Profiling: analytical FLOP/byte counts and the measured comparison behind `yoco bench`."""
