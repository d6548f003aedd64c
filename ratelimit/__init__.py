"""Rate limits for WhatsApp sends: the four budgets enforced before every POST.

Layering: ``cli → broadcaster → (segments, templates, ratelimit)``. This is a leaf package: it
knows nothing of campaigns or the ledger and never imports ``broadcaster``; it is trio-native
and does no I/O of its own (the shared bucket's store is passed in).

One module per budget (architecture.md, "Rate limiting"):
  * ``bucket``  — TokenBucket: per sender number, messages/s (80 default, up to 1,000);
  * ``shared``  — SharedBucket: the same budget shared by all worker processes through a
    TokenStore (Postgres in the engine; MemoryTokenStore here), taken in chunks;
  * ``pair``    — PairSpacing: per recipient, one message per 6 s (131056), 4^X backoff;
  * ``tier``    — the daily unique-recipient tier (250 / 2k / 10k / 100k / unlimited);
  * ``aimd``    — AimdController: cut on 130429 / 429, probe back up, honour Retry-After;
  * ``errors``  — the exception hierarchy.
"""

from .aimd import AimdController, AimdStatistics
from .bucket import BucketStatistics, Limiter, TokenBucket
from .errors import RateLimitConfigError, RateLimitError, TokenStoreError
from .paced import MemorySlotStore, PacedLimiter, PacedStatistics, SlotStore, reserve_slots
from .pair import BACKOFF_131056_CAP_S, PairSpacing, PairStatistics, backoff_131056
from .shared import (
    MemoryTokenStore,
    SharedBucket,
    SharedBucketStatistics,
    TokenStore,
    auto_chunk,
    store_take,
)
from .tier import (
    TIER_WINDOW,
    TIERS,
    TierExhausted,
    require_tier_budget,
    tier_from_api,
    tier_remaining,
)

__all__ = [
    "BACKOFF_131056_CAP_S",
    "TIERS",
    "TIER_WINDOW",
    "AimdController",
    "AimdStatistics",
    "BucketStatistics",
    "Limiter",
    "MemorySlotStore",
    "MemoryTokenStore",
    "PacedLimiter",
    "PacedStatistics",
    "PairSpacing",
    "PairStatistics",
    "RateLimitConfigError",
    "RateLimitError",
    "SharedBucket",
    "SharedBucketStatistics",
    "SlotStore",
    "TierExhausted",
    "TokenBucket",
    "TokenStore",
    "TokenStoreError",
    "auto_chunk",
    "backoff_131056",
    "require_tier_budget",
    "reserve_slots",
    "store_take",
    "tier_from_api",
    "tier_remaining",
]
