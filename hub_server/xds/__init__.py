"""The hub as an xDS control plane: envoy resources from the usable-endpoint
projection, served over ADS (state of the world) to proxyless gRPC clients."""
