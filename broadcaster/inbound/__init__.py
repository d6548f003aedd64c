"""The inbound companion's receiving half: WhatsApp webhooks in, ledger settled.

Layering (each module imports only those to its left):
    signature (pure) · statuses (pure parse + state rules; batch SQL) · envelope (pure split)
    ← ingest (group commit of raw bodies) · apply (worker: bodies → ledger, changes, dead letters)
    ← server (routes on broadcaster.httpserver; serve_inbound)

Schema: migrations/0004_webhooks.sql (webhook_events, status_events, webhook_dead_letters,
webhook_changes, and the ledger trigger that applies statuses which arrived before their wamid).
"""

from broadcaster.inbound.apply import ApplyStatistics, ApplyWorker, Hooks
from broadcaster.inbound.envelope import RECOGNISED_FIELDS, Parsed, parse_webhook
from broadcaster.inbound.ingest import GroupCommitter, IngestStatistics
from broadcaster.inbound.server import WEBHOOK_PATH, InboundService, InboundStatistics, serve_inbound
from broadcaster.inbound.signature import handshake_challenge, sign, verify_signature
from broadcaster.inbound.statuses import (
    ApplyResult,
    StatusEvent,
    apply_new_statuses,
    apply_rechecks,
    final_state,
    next_state,
    parse_status,
)

__all__ = [
    "RECOGNISED_FIELDS",
    "WEBHOOK_PATH",
    "ApplyResult",
    "ApplyStatistics",
    "ApplyWorker",
    "GroupCommitter",
    "Hooks",
    "InboundService",
    "InboundStatistics",
    "IngestStatistics",
    "Parsed",
    "StatusEvent",
    "apply_new_statuses",
    "apply_rechecks",
    "final_state",
    "handshake_challenge",
    "next_state",
    "parse_status",
    "parse_webhook",
    "serve_inbound",
    "sign",
    "verify_signature",
]
