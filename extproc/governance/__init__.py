"""Governance: rate limits, token and spend budgets (reserve, then settle) and usage totals.

`rules.py` says which limits apply to a request (pure), `estimate.py` estimates its prompt
cheaply, `memory.py` and `redis_store.py` keep the windows and counters (one processor, or
every replica through Redis), and `governor.py` ties them to a request: a `Reservation` at
admission, settled to the reported usage when the request's record closes.
"""
