"""A small service built on hub_client.BaseService: it serves quotes over gRPC.

Run a hub (``make run``), then::

    .venv/bin/python examples/quote_service.py --hub 127.0.0.1:7000 --port 0

It registers as ``quotes`` with a gRPC health check on itself, keeps its lease
alive (and registers again if the hub restarts and forgot it), reports its load,
and on Ctrl-C or SIGTERM goes NOT_SERVING, deregisters, drains and exits 0.

The API, ``examples.quotes.v1.QuoteService/GetQuote``, is described at start-up
from a descriptor built in code (so this example needs no .proto file or
generated stubs) and answers with the platform's ``aitrading.common.v1.TickData``.
Server reflection therefore works, and grpcurl can call it::

    grpcurl -plaintext -d '{"symbol":"EURUSD"}' 127.0.0.1:PORT \\
        examples.quotes.v1.QuoteService/GetQuote
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from typing import Any

import grpc
from aitrading.common.v1 import decimal_pb2, tick_data_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from hub_client import BaseService, ServiceConfig

SERVICE = "examples.quotes.v1.QuoteService"


def _register_descriptors() -> type[Any]:
    """Adds examples/quotes/v1/quotes.proto to the default pool; returns the request class.

    Equivalent to::

        syntax = "proto3";
        package examples.quotes.v1;
        import "aitrading/common/v1/tick_data.proto";
        message GetQuoteRequest { string symbol = 1; }
        service QuoteService {
          rpc GetQuote(GetQuoteRequest) returns (aitrading.common.v1.TickData);
        }
    """
    pool = descriptor_pool.Default()
    name = "examples/quotes/v1/quotes.proto"
    try:
        pool.FindFileByName(name)
    except KeyError:
        f = descriptor_pb2.FileDescriptorProto(
            name=name,
            package="examples.quotes.v1",
            syntax="proto3",
            dependency=[tick_data_pb2.DESCRIPTOR.name],
        )
        msg = f.message_type.add(name="GetQuoteRequest")
        msg.field.add(
            name="symbol",
            number=1,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
            json_name="symbol",
        )
        svc = f.service.add(name="QuoteService")
        svc.method.add(
            name="GetQuote",
            input_type=".examples.quotes.v1.GetQuoteRequest",
            output_type=".aitrading.common.v1.TickData",
        )
        pool.Add(f)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("examples.quotes.v1.GetQuoteRequest")
    )


GetQuoteRequest = _register_descriptors()


def _price(symbol: str) -> tuple[str, str]:
    """A made-up but stable bid/ask for a symbol, moving a little every second."""
    seed = int(hashlib.sha256(symbol.encode()).hexdigest()[:8], 16)
    mid = 1 + (seed % 100_000) / 1000 + (int(time.time()) % 60) / 10_000
    return f"{mid - 0.0001:.5f}", f"{mid + 0.0001:.5f}"


class QuoteService(BaseService):
    """Answers GetQuote; reports its in-flight calls as load."""

    service_names = (SERVICE,)

    def __init__(self, config: ServiceConfig, *, capacity: int = 100) -> None:
        super().__init__(config)
        self.capacity = capacity
        self.in_flight = 0
        self.served = 0

    async def setup(self, server: grpc.aio.Server) -> None:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "GetQuote": grpc.unary_unary_rpc_method_handler(
                    self.get_quote,
                    request_deserializer=GetQuoteRequest.FromString,
                    response_serializer=tick_data_pb2.TickData.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))

    async def get_quote(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not request.symbol:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "symbol is required")
        self.in_flight += 1
        try:
            bid, ask = _price(request.symbol)
            tick = tick_data_pb2.TickData(
                symbol=request.symbol.upper(),
                source=self.config.service_name,
                bid=decimal_pb2.Decimal(value=bid),
                ask=decimal_pb2.Decimal(value=ask),
                sequence=self.served,
            )
            tick.receive_time.GetCurrentTime()
            self.served += 1
            return tick
        finally:
            self.in_flight -= 1

    async def check_health(self) -> bool:
        # A real service would check its database, its feeds, ...
        return True

    def current_load(self) -> float:
        return self.in_flight / self.capacity

    async def config_changed(self, config: Any) -> None:
        # The hub pushes the merged configuration at start and on every change.
        limits = getattr(config, "rate_limits", config)
        logging.getLogger("quotes").info("configuration: rate limits %s", limits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An example service registered with Central Hub")
    parser.add_argument("--hub", default="127.0.0.1:7000", help="hub address (default %(default)s)")
    parser.add_argument("--name", default="quotes", help="service name (default %(default)s)")
    parser.add_argument("--version", default="1.0.0", help="version to register")
    parser.add_argument("--host", default="127.0.0.1", help="listen and advertised host")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--ttl", type=int, default=10, help="lease TTL in seconds")
    parser.add_argument("--drain", type=float, default=2.0, help="drain seconds on shutdown")
    parser.add_argument("--probe-interval", type=float, default=2.0, help="hub probe interval")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = ServiceConfig(
        service_name=args.name,
        version=args.version,
        port=args.port,
        host=args.host,
        hub_target=args.hub,
        metadata={"example": "true"},
        ttl=args.ttl,
        probe_interval=args.probe_interval,
        drain_seconds=args.drain,
        load_interval=2.0,
    )
    return QuoteService(config).main()


if __name__ == "__main__":
    sys.exit(main())
