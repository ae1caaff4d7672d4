"""The benchmark (`make bench`, `bench/phases.py`): plain Envoy versus the gateway.

`run.py` orchestrates; `systems` starts what is measured, `hey` and `measure` measure, `report`
prints and writes the results. Development only: nothing in `extproc` imports it.
"""
