"""What the processor reports about each request: its record, metrics and access log line.

A `RequestRecord` collects what one HTTP request did (caller, model, provider, status, tokens,
times) across its ext_proc streams; when the last of them ends, `Telemetry.emit` turns it into
metrics (`extproc.metrics`) and one JSON access-log line (`access_log.py`).
"""
