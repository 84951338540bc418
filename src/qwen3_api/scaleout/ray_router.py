"""Ray Serve's request router for the engine replicas, deciding with `PrefixAwareRouter`.

The ingress passes each call's `RouteKey` as the keyword argument `route`; this router ranks the live replicas
with it, and Ray Serve sends the request to the first of them that has room (`max_ongoing_requests`). Load is
what this router itself has in flight per replica, counted from Serve's routed/completed callbacks.
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from qwen3_api.scaleout.routing import PrefixAwareRouter, RouteKey, register_active

UNAVAILABLE_SKIP_S = 10.0  # a replica Ray reported unavailable is passed over this long

# Ray Serve ships this module to the handle's process by value (cloudpickle): module-level state here would be a
# copy. What the ingress reads lives in `routing` (imported by reference) instead.


def route_key_of(pending_request: PendingRequest | None) -> RouteKey:
    route = pending_request.kwargs.get("route") if pending_request is not None else None
    return route if isinstance(route, RouteKey) else RouteKey()


class PrefixAwareRequestRouter(RequestRouter):
    """Longest cached prefix first, unless overloaded; else least loaded (see `qwen3_api.scaleout.routing`)."""

    # Serve's default selection asks each ranked replica for its queue length (an actor call per request whose
    # cached answer is older than 10 s) and skips it when the answer is late. The policy already ranks by load (its
    # own in-flight counts), so the first ranked live replica is taken as it is, without that extra round trip; a
    # replica that is full refuses the call itself (Serve's rejection protocol) and the call is routed again.
    queue_len_response_deadline_s = 10.0
    max_queue_len_response_deadline_s = 30.0

    async def _select_from_candidate_replicas(
        self, candidates: list[RunningReplica], backoff_index: int
    ) -> RunningReplica | None:
        # Never leave a request waiting here when a ranked replica is live: waiting requests hold Serve's routing
        # tasks (a few per replica) and so stall every other request behind them. A full replica answers 503.
        # A replica Ray reported unavailable (its actor unreachable, e.g. just killed) is passed over for a while:
        # Serve re-routes such a call at once, and taking the same replica again would loop on it.
        now = time.monotonic()
        for replica in candidates:
            live = self._replicas.get(replica.replica_id)
            if live is not None and self._unavailable_until.get(replica.replica_id, 0.0) <= now:
                return live
        return None

    def on_replica_actor_unavailable(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_unavailable(replica_id)
        self._unavailable_until[replica_id] = time.monotonic() + UNAVAILABLE_SKIP_S

    def initialize_state(self, **kwargs: Any) -> None:
        self.policy = PrefixAwareRouter(**kwargs)
        self._reasons: dict[str, Any] = {}
        self._unavailable_until: dict[ReplicaID, float] = {}
        register_active(self.policy)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self.policy.set_replicas(r.replica_id.unique_id for r in replicas)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.policy.remove_replica(replica_id.unique_id)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # Back off between rounds when no ranked replica can take the request. Serve's base loop retries at once
            # unless told so (its locality mixin sets this); retrying at once spins the router's event loop, which
            # then starves the very replies (from slow, loading replicas) that would let requests through.
            pending_request.routing_context.should_backoff = True
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        if not by_id:
            return []
        self.policy.set_replicas(r.replica_id.unique_id for r in self._replicas.values())
        try:
            decision = self.policy.choose(route_key_of(pending_request), list(by_id))
        except ValueError:  # no replica known to the policy yet
            return [list(by_id.values())]
        if pending_request is not None:
            request_id = pending_request.metadata.internal_request_id
            self._reasons[request_id] = decision.reason
            self.policy.reserve(decision.ranking[0], request_id)
        return [[by_id[name]] for name in decision.ranking]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        request_id = pending_request.metadata.internal_request_id
        reason = self._reasons.pop(request_id, "least_loaded")
        self.policy.confirm(replica_id.unique_id, route_key_of(pending_request), request_id, reason)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._reasons.pop(internal_request_id, None)  # one that was never confirmed (rejected, then retried)
        self.policy.on_completed(internal_request_id)
