"""Development-only code: never imported by the production processor.

`stack` starts fake provider + processor + Envoy (for `make run`, the e2e tests and the
benchmark), `local` is `make run`, `fakes` are the fake providers speaking each wire format.
"""
