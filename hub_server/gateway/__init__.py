"""The hub's HTTP/JSON API: the gRPC methods transcoded by their google.api.http
annotations, the product write-up's endpoints, and the OpenAPI document."""
