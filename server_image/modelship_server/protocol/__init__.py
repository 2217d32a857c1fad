"""The wire adapters: REST (HTTP/1.1) and gRPC, each a thin layer over the DataPlane."""
