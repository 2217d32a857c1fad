"""Tensor codecs: wire formats in, numpy arrays out, and back.

`tensors` turns one tensor's payload (JSON values, binary bytes, protobuf
contents) into an array, checking value types and element counts; `rest` and
`grpc` decode and encode whole requests and responses for their protocol.
"""
