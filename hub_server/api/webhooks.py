"""WebhookService: check the request, call Webhooks, shape the answer. Secrets
appear only in Create's and RotateSecret's answers (never in audit records,
which hold requests and notes only)."""

from __future__ import annotations

from aitrading.hub.v1 import webhook_pb2, webhook_pb2_grpc

from hub_server.rpc.context import audit_note, audited
from hub_server.webhooks.service import Webhooks


class WebhookServicer(webhook_pb2_grpc.WebhookServiceServicer):
    def __init__(self, webhooks: Webhooks) -> None:
        self._webhooks = webhooks

    @audited
    async def CreateSubscription(self, request, context):
        sub, secret = await self._webhooks.create(
            request.url, request.event_types, request.tenant_id, request.description
        )
        audit_note(target=f"webhook/{sub.id}", url=sub.url)
        return webhook_pb2.CreateSubscriptionResponse(subscription=sub, secret=secret)

    async def ListSubscriptions(self, request, context):
        subs = await self._webhooks.list_all()
        return webhook_pb2.ListSubscriptionsResponse(subscriptions=subs)

    @audited
    async def DeleteSubscription(self, request, context):
        audit_note(target=f"webhook/{request.id}")
        await self._webhooks.delete(request.id)
        return webhook_pb2.DeleteSubscriptionResponse()

    @audited
    async def TestSubscription(self, request, context):
        audit_note(target=f"webhook/{request.id}")
        event_id, attempt = await self._webhooks.test(request.id)
        return webhook_pb2.TestSubscriptionResponse(attempt=attempt.to_pb(), event_id=event_id)

    @audited
    async def RotateSecret(self, request, context):
        audit_note(target=f"webhook/{request.id}")
        secret, until = await self._webhooks.rotate(request.id)
        response = webhook_pb2.RotateSecretResponse(secret=secret)
        if until:
            response.previous_valid_until.FromNanoseconds(int(until * 1e9))
        return response

    async def ListDeliveries(self, request, context):
        deliveries = await self._webhooks.deliveries(request.id, request.limit)
        return webhook_pb2.ListDeliveriesResponse(deliveries=deliveries)
