"""Fuzz targets shared by the hostile-input tests (hypothesis, seconds in CI) and
bench/fuzz.py (atheris, coverage-guided, minutes by hand)."""
