"""The processor's I/O shell: the gRPC servicer, protobuf conversion, lifecycle, admin server.

Everything here talks to Envoy or the network; the decisions it carries out live in
`extproc.pipeline` and `extproc.decisions`.
"""
