"""Webhooks: subscriptions (etcd), events from the hub's change logs turned into
a versioned envelope, and their signed, retried, per-subscription ordered
delivery by the elected replica. The pure parts (signing, envelope, backoff,
target policy) are apart from the etcd-backed service (service.py)."""
