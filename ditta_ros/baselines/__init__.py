"""Baseline methods evaluated beside DiTTA on the same protocol."""
