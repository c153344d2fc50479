"""Helpers shared by the tests: fixtures, checks and the harness that runs train.py as processes (no tests here)."""
