"""Workloads, runs, metrics, comparison of simulated and measured results, reports."""
