"""Platform-wide schemas (aitrading.{common,trading,business,ml}.v1): realistic
messages survive the binary and JSON encodings, and the style rules that buf
cannot check (tier numbering, no services) hold."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as PyDecimal
from typing import TypeVar

import pytest
from aitrading.business.v1 import subscription_pb2, tier_pb2, usage_pb2, user_pb2
from aitrading.common.v1 import (
    decimal_pb2,
    envelope_pb2,
    market_pb2,
    tick_data_pb2,
    user_context_pb2,
)
from aitrading.hub.v1 import types_pb2 as hub_types_pb2
from aitrading.ml.v1 import feature_pb2, prediction_pb2
from aitrading.trading.v1 import order_event_pb2, order_pb2, signal_pb2
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

M = TypeVar("M", bound=Message)

NEW_MODULES = [
    decimal_pb2,
    envelope_pb2,
    market_pb2,
    tick_data_pb2,
    user_context_pb2,
    signal_pb2,
    order_pb2,
    order_event_pb2,
    user_pb2,
    tier_pb2,
    subscription_pb2,
    usage_pb2,
    feature_pb2,
    prediction_pb2,
]

T0 = dt.datetime(2024, 1, 20, 10, 30, 0, 123456, tzinfo=dt.UTC)


def ts(offset_ms: int = 0) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(T0 + dt.timedelta(milliseconds=offset_ms))
    return t


def dec(value: str) -> decimal_pb2.Decimal:
    return decimal_pb2.Decimal(value=value)


def roundtrip(msg: M) -> M:
    """Binary and JSON round trips; both must reproduce the message exactly."""
    cls = type(msg)
    from_binary = cls.FromString(msg.SerializeToString())
    assert from_binary == msg
    text = json_format.MessageToJson(msg)
    from_json = json_format.Parse(text, cls())
    assert from_json == msg
    return from_json


# --- common ----------------------------------------------------------------


def eurusd_tick(seq: int, bid: str, ask: str) -> tick_data_pb2.TickData:
    return tick_data_pb2.TickData(
        symbol="EURUSD",
        asset_class=market_pb2.ASSET_CLASS_FOREX,
        exchange="ICMARKETS",
        source="mt5-bridge",
        bid=dec(bid),
        ask=dec(ask),
        bid_size=dec("1500000"),
        ask_size=dec("2000000"),
        exchange_time=ts(seq),
        receive_time=ts(seq + 3),
        sequence=seq,
    )


def btc_trade_tick() -> tick_data_pb2.TickData:
    return tick_data_pb2.TickData(
        symbol="BTCUSDT",
        asset_class=market_pb2.ASSET_CLASS_CRYPTO,
        exchange="BINANCE",
        source="binance-ws",
        last=dec("42150.12000000"),
        last_size=dec("0.000123450000000001"),  # 18 decimals: beyond units+nanos
        volume=dec("18234.55812"),
        exchange_time=ts(),
        receive_time=ts(2),
        sequence=9_007_199_254_740_993,  # above 2**53: must not pass through a double
    )


def test_tick_data_round_trip_keeps_exact_prices() -> None:
    tick = roundtrip(btc_trade_tick())
    assert tick.symbol == "BTCUSDT"
    assert tick.asset_class == market_pb2.ASSET_CLASS_CRYPTO
    assert PyDecimal(tick.last.value) == PyDecimal("42150.12")
    assert tick.last_size.value == "0.000123450000000001"
    assert tick.sequence == 9_007_199_254_740_993
    assert tick.receive_time.ToDatetime(dt.UTC) - tick.exchange_time.ToDatetime(
        dt.UTC
    ) == dt.timedelta(milliseconds=2)
    # A trade-only tick carries no quote: unset, not zero.
    assert not tick.HasField("bid")
    assert not tick.HasField("ask")


def test_batch_tick_data_round_trip() -> None:
    batch = tick_data_pb2.BatchTickData(
        batch_id="batch-000042",
        source="mt5-bridge",
        ticks=[
            eurusd_tick(1, "1.08341", "1.08343"),
            eurusd_tick(2, "1.08342", "1.08345"),
            eurusd_tick(3, "1.08340", "1.08344"),
        ],
        created_time=ts(10),
    )
    got = roundtrip(batch)
    assert [t.sequence for t in got.ticks] == [1, 2, 3]
    spreads = [PyDecimal(t.ask.value) - PyDecimal(t.bid.value) for t in got.ticks]
    assert spreads == [PyDecimal("0.00002"), PyDecimal("0.00003"), PyDecimal("0.00004")]


def test_envelope_carries_serialized_batch_tick_data() -> None:
    batch = tick_data_pb2.BatchTickData(
        batch_id="batch-000043",
        source="mt5-bridge",
        ticks=[eurusd_tick(7, "1.08341", "1.08343"), eurusd_tick(8, "1.08342", "1.08345")],
        created_time=ts(5),
    )
    envelope = envelope_pb2.MessageEnvelope(
        message_type="tick_data",
        user_id="user_123",
        payload=batch.SerializeToString(),
        timestamp=ts(6),
        service_source="data-bridge",
        correlation_id="req_456",
        message_id="01HMB7Z2Q9R3J8X4T5V6W7Y8Z9",
        tenant_id="company_abc",
        payload_type=tick_data_pb2.BatchTickData.DESCRIPTOR.full_name,
        content_type=envelope_pb2.CONTENT_TYPE_PROTOBUF,
        headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        causation_id="01HMB7Z2Q9R3J8X4T5V6W7Y8Z8",
    )
    got = roundtrip(envelope)

    assert got.message_type == "tick_data"
    assert got.user_id == "user_123"
    assert got.service_source == "data-bridge"
    assert got.correlation_id == "req_456"
    assert got.tenant_id == "company_abc"
    assert got.timestamp.ToDatetime(dt.UTC) == T0 + dt.timedelta(milliseconds=6)
    assert got.headers["traceparent"].startswith("00-")
    assert got.payload_type == "aitrading.common.v1.BatchTickData"

    inner = tick_data_pb2.BatchTickData.FromString(got.payload)
    assert inner == batch
    assert [t.ask.value for t in inner.ticks] == ["1.08343", "1.08345"]


def test_envelope_json_payload_variant() -> None:
    # A JSON-encoded payload (content_type JSON) for consumers without protobuf.
    tick = btc_trade_tick()
    envelope = envelope_pb2.MessageEnvelope(
        message_type="tick_data",
        payload=json_format.MessageToJson(tick).encode(),
        payload_type=tick.DESCRIPTOR.full_name,
        content_type=envelope_pb2.CONTENT_TYPE_JSON,
        timestamp=ts(),
    )
    got = roundtrip(envelope)
    inner = json_format.Parse(got.payload.decode(), tick_data_pb2.TickData())
    assert inner == tick


def test_user_context_round_trip() -> None:
    ctx = user_context_pb2.UserContext(
        user_id="user_123",
        tenant_id="company_abc",
        company_id="company_abc",
        subscription_tier=user_context_pb2.SUBSCRIPTION_TIER_PRO,
        roles=["trader", "analyst"],
        correlation_id="req_456",
        session_id="sess_789",
        scopes=["orders:write", "signals:read"],
        authenticated_at=ts(),
        expires_at=ts(3_600_000),
    )
    got = roundtrip(ctx)
    assert got.subscription_tier == user_context_pb2.SUBSCRIPTION_TIER_PRO
    assert list(got.roles) == ["trader", "analyst"]
    assert got.company_id == got.tenant_id == "company_abc"
    assert got.expires_at.seconds - got.authenticated_at.seconds == 3600


# --- trading ---------------------------------------------------------------


def test_trading_signal_round_trip() -> None:
    signal = signal_pb2.TradingSignal(
        signal_id="sig_001",
        tenant_id="company_abc",
        user_id="user_123",
        symbol="EURUSD",
        timeframe=market_pb2.TIMEFRAME_H1,
        direction=signal_pb2.SIGNAL_DIRECTION_LONG,
        strength=0.72,
        confidence=0.64,
        strategy_id="trend-follow",
        strategy_version="2.1.0",
        entry_price=dec("1.08350"),
        stop_loss=dec("1.08100"),
        take_profit=dec("1.08850"),
        generated_at=ts(),
        expires_at=ts(15 * 60_000),
        prediction_id="pred_001",
        reason="EMA20 crossed above EMA50 with rising momentum",
        attributes={"regime": "trending", "rsi_14": "61.4"},
        correlation_id="req_456",
    )
    got = roundtrip(signal)
    assert got.direction == signal_pb2.SIGNAL_DIRECTION_LONG
    assert got.timeframe == market_pb2.TIMEFRAME_H1
    assert got.strength == 0.72
    assert got.confidence == 0.64
    risk = PyDecimal(got.entry_price.value) - PyDecimal(got.stop_loss.value)
    reward = PyDecimal(got.take_profit.value) - PyDecimal(got.entry_price.value)
    assert reward / risk == 2
    assert got.attributes["regime"] == "trending"


def make_fill(fill_id: str, qty: str, price: str, offset_ms: int) -> order_pb2.Fill:
    return order_pb2.Fill(
        fill_id=fill_id,
        order_id="ord_001",
        venue_trade_id=f"venue-{fill_id}",
        quantity=dec(qty),
        price=dec(price),
        fee=dec("0.00042"),
        fee_currency="BNB",
        liquidity=order_pb2.LIQUIDITY_INDICATOR_MAKER,
        executed_at=ts(offset_ms),
    )


def make_order() -> order_pb2.Order:
    fills = [
        make_fill("fill_1", "0.30", "42100.50", 100),
        make_fill("fill_2", "0.20", "42100.00", 200),
    ]
    return order_pb2.Order(
        order_id="ord_001",
        client_order_id="cli-2024-0001",
        tenant_id="company_abc",
        user_id="user_123",
        account_id="acc_binance_1",
        symbol="BTCUSDT",
        exchange="BINANCE",
        side=order_pb2.ORDER_SIDE_BUY,
        type=order_pb2.ORDER_TYPE_STOP_LIMIT,
        time_in_force=order_pb2.TIME_IN_FORCE_GTD,
        quantity=dec("1.00"),
        limit_price=dec("42101.00"),
        stop_price=dec("42090.00"),
        stop_loss_price=dec("41500.00"),
        take_profit_price=dec("43500.00"),
        expire_time=ts(86_400_000),
        status=order_pb2.ORDER_STATUS_PARTIALLY_FILLED,
        filled_quantity=dec("0.50"),
        remaining_quantity=dec("0.50"),
        average_fill_price=dec("42100.30"),
        fills=fills,
        venue_order_id="8389765519312",
        signal_id="sig_001",
        strategy_id="trend-follow",
        created_at=ts(),
        updated_at=ts(200),
        version=3,
        correlation_id="req_456",
    )


def test_order_round_trip_with_fills() -> None:
    got = roundtrip(make_order())
    assert got.side == order_pb2.ORDER_SIDE_BUY
    assert got.type == order_pb2.ORDER_TYPE_STOP_LIMIT
    assert got.time_in_force == order_pb2.TIME_IN_FORCE_GTD
    assert got.status == order_pb2.ORDER_STATUS_PARTIALLY_FILLED
    assert got.version == 3
    filled = sum(PyDecimal(f.quantity.value) for f in got.fills)
    assert filled == PyDecimal(got.filled_quantity.value)
    assert PyDecimal(got.quantity.value) - filled == PyDecimal(got.remaining_quantity.value)
    vwap = sum(PyDecimal(f.quantity.value) * PyDecimal(f.price.value) for f in got.fills) / filled
    assert vwap == PyDecimal(got.average_fill_price.value)
    assert [f.fill_id for f in got.fills] == ["fill_1", "fill_2"]


def test_market_order_has_no_prices() -> None:
    order = order_pb2.Order(
        order_id="ord_002",
        client_order_id="cli-2024-0002",
        symbol="EURUSD",
        side=order_pb2.ORDER_SIDE_SELL,
        type=order_pb2.ORDER_TYPE_MARKET,
        time_in_force=order_pb2.TIME_IN_FORCE_IOC,
        quantity=dec("100000"),
        status=order_pb2.ORDER_STATUS_PENDING_NEW,
    )
    got = roundtrip(order)
    assert not got.HasField("limit_price")
    assert not got.HasField("stop_price")
    assert not got.HasField("average_fill_price")


def test_order_event_round_trip() -> None:
    order = make_order()
    event = order_event_pb2.OrderEvent(
        event_id="evt_0003",
        type=order_event_pb2.ORDER_EVENT_TYPE_PARTIALLY_FILLED,
        order_id=order.order_id,
        client_order_id=order.client_order_id,
        tenant_id=order.tenant_id,
        user_id=order.user_id,
        status=order_pb2.ORDER_STATUS_PARTIALLY_FILLED,
        fill=order.fills[-1],
        order=order,
        sequence=order.version,
        occurred_at=ts(200),
        correlation_id="req_456",
    )
    got = roundtrip(event)
    assert got.type == order_event_pb2.ORDER_EVENT_TYPE_PARTIALLY_FILLED
    assert got.fill.fill_id == "fill_2"
    assert got.fill.liquidity == order_pb2.LIQUIDITY_INDICATOR_MAKER
    assert got.order == order
    assert got.sequence == got.order.version


# --- business --------------------------------------------------------------


def tier_defaults() -> tier_pb2.TierCatalog:
    """The write-up's subscription tier defaults."""
    return tier_pb2.TierCatalog(
        tiers=[
            tier_pb2.TierLimits(
                tier=tier_pb2.TIER_FREE,
                rate_limits=tier_pb2.RateLimits(api_calls_per_hour=1000, websocket_connections=5),
                features=tier_pb2.FeatureAccess(basic_analytics=True),
            ),
            tier_pb2.TierLimits(
                tier=tier_pb2.TIER_PRO,
                rate_limits=tier_pb2.RateLimits(api_calls_per_hour=10000, websocket_connections=50),
                features=tier_pb2.FeatureAccess(basic_analytics=True, advanced_ai=True),
                resource_limits=tier_pb2.ResourceLimits(
                    max_concurrent_requests=100, max_data_storage_mb=1000
                ),
            ),
            tier_pb2.TierLimits(
                tier=tier_pb2.TIER_ENTERPRISE,
                rate_limits=tier_pb2.RateLimits(
                    api_calls_per_hour=100000, websocket_connections=500
                ),
                features=tier_pb2.FeatureAccess(
                    basic_analytics=True, advanced_ai=True, custom_models=True
                ),
            ),
        ]
    )


def test_tier_catalog_round_trip_and_json_shape() -> None:
    got = roundtrip(tier_defaults())
    by_tier = {t.tier: t for t in got.tiers}
    assert by_tier[tier_pb2.TIER_FREE].rate_limits.api_calls_per_hour == 1000
    assert by_tier[tier_pb2.TIER_PRO].rate_limits.websocket_connections == 50
    assert by_tier[tier_pb2.TIER_ENTERPRISE].features.custom_models
    assert not by_tier[tier_pb2.TIER_FREE].features.advanced_ai

    # The JSON form matches the write-up's tenant config shape.
    pro = json_format.MessageToDict(
        by_tier[tier_pb2.TIER_PRO],
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    assert pro["rate_limits"] == {"api_calls_per_hour": "10000", "websocket_connections": 50}
    assert pro["features"] == {
        "basic_analytics": True,
        "advanced_ai": True,
        "custom_models": False,
    }
    assert pro["resource_limits"] == {
        "max_concurrent_requests": 100,
        "max_data_storage_mb": "1000",
    }


def test_tier_numbering_matches_common_and_hub() -> None:
    for name in ("UNSPECIFIED", "FREE", "PRO", "ENTERPRISE"):
        business = tier_pb2.Tier.Value(f"TIER_{name}")
        common = user_context_pb2.SubscriptionTier.Value(f"SUBSCRIPTION_TIER_{name}")
        hub = hub_types_pb2.SubscriptionTier.Value(f"SUBSCRIPTION_TIER_{name}")
        assert business == common == hub


def test_user_round_trip() -> None:
    user = user_pb2.User(
        user_id="user_123",
        tenant_id="company_abc",
        company_id="company_abc",
        email="rina@company-abc",
        email_verified=True,
        profile=user_pb2.UserProfile(
            display_name="Rina S.",
            first_name="Rina",
            last_name="Susanti",
            phone_number="+6281234567890",
            country_code="ID",
            time_zone="Asia/Jakarta",
            locale="id-ID",
        ),
        status=user_pb2.USER_STATUS_ACTIVE,
        roles=[user_pb2.ROLE_TRADER, user_pb2.ROLE_TENANT_ADMIN],
        mfa_enabled=True,
        created_at=ts(-86_400_000),
        updated_at=ts(),
        last_login_at=ts(),
        version=7,
    )
    got = roundtrip(user)
    assert got.status == user_pb2.USER_STATUS_ACTIVE
    assert list(got.roles) == [user_pb2.ROLE_TRADER, user_pb2.ROLE_TENANT_ADMIN]
    assert got.profile.time_zone == "Asia/Jakarta"
    assert got.version == 7
    # Token role names are the lower-case enum names without the prefix.
    names = [user_pb2.Role.Name(r).removeprefix("ROLE_").lower() for r in got.roles]
    assert names == ["trader", "tenant_admin"]


def test_subscription_round_trip() -> None:
    enterprise = tier_defaults().tiers[2]
    limits = tier_pb2.TierLimits()
    limits.CopyFrom(enterprise)
    limits.rate_limits.api_calls_per_hour = 250000  # negotiated override
    sub = subscription_pb2.Subscription(
        subscription_id="sub_001",
        tenant_id="company_abc",
        tier=tier_pb2.TIER_ENTERPRISE,
        status=subscription_pb2.SUBSCRIPTION_STATUS_ACTIVE,
        billing_period=subscription_pb2.BILLING_PERIOD_YEARLY,
        price=subscription_pb2.Money(currency_code="USD", amount=dec("11988.00")),
        seats=25,
        current_period_start=ts(),
        current_period_end=ts(365 * 86_400_000),
        cancel_at_period_end=False,
        limits=limits,
        external_billing_id="sub_ext_9f8e7d",
        created_at=ts(),
        updated_at=ts(),
        version=1,
    )
    got = roundtrip(sub)
    assert got.tier == tier_pb2.TIER_ENTERPRISE
    assert got.billing_period == subscription_pb2.BILLING_PERIOD_YEARLY
    assert PyDecimal(got.price.amount.value) / 12 == PyDecimal("999")
    assert got.limits.rate_limits.api_calls_per_hour == 250000
    assert got.limits.rate_limits.websocket_connections == 500
    assert got.limits.features.custom_models
    assert not got.HasField("trial_end")


def test_tenant_usage_round_trip() -> None:
    usage = usage_pb2.TenantUsage(
        tenant_id="company_abc",
        tier=tier_pb2.TIER_PRO,
        window_start=ts(),
        window_end=ts(3_600_000),
        api_calls=9_876,
        peak_websocket_connections=48,
        peak_concurrent_requests=91,
        data_storage_mb=812,
        rejected_requests=3,
    )
    got = roundtrip(usage)
    pro = tier_defaults().tiers[1]
    assert got.api_calls <= pro.rate_limits.api_calls_per_hour
    assert got.peak_websocket_connections <= pro.rate_limits.websocket_connections


# --- ml --------------------------------------------------------------------


def make_vector(symbol: str, rsi: float) -> feature_pb2.FeatureVector:
    return feature_pb2.FeatureVector(
        vector_id=f"fv_{symbol}_0001",
        symbol=symbol,
        timeframe=market_pb2.TIMEFRAME_M15,
        timestamp=ts(),
        feature_set="technical_core",
        feature_set_version="3.2.0",
        features=[
            feature_pb2.Feature(name="rsi_14", number_value=rsi),
            feature_pb2.Feature(name="ema_ratio_20_50", number_value=1.0023),
            feature_pb2.Feature(name="bars_since_high", int_value=17),
            feature_pb2.Feature(name="session", string_value="london"),
            feature_pb2.Feature(name="news_window", bool_value=False),
            feature_pb2.Feature(name="funding_rate"),  # missing value
        ],
        computed_at=ts(40),
    )


def test_feature_batch_round_trip() -> None:
    batch = feature_pb2.FeatureBatch(
        batch_id="fb_0001",
        feature_set="technical_core",
        feature_set_version="3.2.0",
        vectors=[make_vector("EURUSD", 61.4), make_vector("XAUUSD", 38.9)],
        created_at=ts(50),
    )
    got = roundtrip(batch)
    vec = got.vectors[0]
    assert vec.timeframe == market_pb2.TIMEFRAME_M15
    assert [f.name for f in vec.features][:2] == ["rsi_14", "ema_ratio_20_50"]
    kinds = [f.WhichOneof("value") for f in vec.features]
    assert kinds == [
        "number_value",
        "number_value",
        "int_value",
        "string_value",
        "bool_value",
        None,
    ]
    # False is still a value: the oneof keeps presence through both encodings.
    assert vec.features[4].HasField("bool_value")
    assert got.vectors[1].features[0].number_value == 38.9


def test_prediction_round_trip() -> None:
    latency = Duration()
    latency.FromMilliseconds(7)
    horizon = Duration()
    horizon.FromSeconds(3600)
    prediction = prediction_pb2.Prediction(
        prediction_id="pred_001",
        model_id="lstm-price-direction",
        model_version="2024.01.15-a1b2c3",
        task=prediction_pb2.MODEL_TASK_CLASSIFICATION,
        symbol="EURUSD",
        timeframe=market_pb2.TIMEFRAME_M15,
        feature_vector_id="fv_EURUSD_0001",
        feature_set_version="3.2.0",
        outputs=[
            prediction_pb2.PredictionOutput(
                name="return_1h", value=0.0012, lower_bound=-0.0004, upper_bound=0.0028
            ),
            prediction_pb2.PredictionOutput(name="volatility_1h", value=0.0009),
        ],
        predicted_label="up",
        class_probabilities={"up": 0.64, "flat": 0.21, "down": 0.15},
        confidence=0.64,
        horizon=horizon,
        timestamp=ts(),
        predicted_at=ts(47),
        latency=latency,
        explanation=prediction_pb2.Explanation(
            method=prediction_pb2.EXPLANATION_METHOD_SHAP,
            base_value=0.33,
            contributions=[
                prediction_pb2.FeatureContribution(
                    feature_name="ema_ratio_20_50", contribution=0.19, feature_value="1.0023"
                ),
                prediction_pb2.FeatureContribution(
                    feature_name="rsi_14", contribution=0.12, feature_value="61.4"
                ),
            ],
            summary="Trend and momentum both point up.",
        ),
        tenant_id="company_abc",
        correlation_id="req_456",
    )
    batch = prediction_pb2.PredictionBatch(
        batch_id="pb_0001", predictions=[prediction], created_at=ts(48)
    )
    got = roundtrip(batch).predictions[0]
    assert got.model_id == "lstm-price-direction"
    assert got.task == prediction_pb2.MODEL_TASK_CLASSIFICATION
    assert got.latency.ToMilliseconds() == 7
    assert got.horizon.ToSeconds() == 3600
    assert sum(got.class_probabilities.values()) == pytest.approx(1.0)
    assert max(got.class_probabilities, key=got.class_probabilities.get) == got.predicted_label
    assert got.outputs[0].HasField("lower_bound")
    assert not got.outputs[1].HasField("lower_bound")
    assert got.explanation.method == prediction_pb2.EXPLANATION_METHOD_SHAP
    assert [c.feature_name for c in got.explanation.contributions] == [
        "ema_ratio_20_50",
        "rsi_14",
    ]


# --- schema rules ------------------------------------------------------------


def test_schemas_define_no_services_and_stay_in_their_packages() -> None:
    for module in NEW_MODULES:
        fd = module.DESCRIPTOR
        assert not fd.services_by_name, f"{fd.name} defines a service"
        package = fd.package
        assert package.startswith("aitrading.") and package.endswith(".v1")
        assert fd.name.startswith(package.replace(".", "/") + "/")
        assert not any(dep.package == "aitrading.hub.v1" for dep in fd.dependencies)


def test_business_does_not_depend_on_trading_or_ml() -> None:
    for module in (user_pb2, tier_pb2, subscription_pb2, usage_pb2):
        for dep in module.DESCRIPTOR.dependencies:
            assert dep.package in {
                "aitrading.business.v1",
                "aitrading.common.v1",
                "google.protobuf",
            }
