"""Policies: platform teams' own rules, run at admission and at completion of every request.

`api` is the public, stable surface a policy is written against; `registry` finds policies by
name (built-ins and the `llm_gateway.policies` entry-point group) and checks their options when
the config loads; `chain` runs a request's policies with their deadlines and error handling.
"""
