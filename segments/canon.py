"""Canonical forms for the free-text contact fields that segments filter on.

Guarantees:
- Pure and total: every input string gives an answer; nothing raises.
- `canonical_language` returns WhatsApp's code spelling (`hi`, `en_US`: '_' not '-', region upper
  case); `canonical_genre` returns one of `GENRES` when it recognises the value.
- An unrecognised value is kept (trimmed, lower case, inner whitespace collapsed) and reported as
  unknown (`known=False`), never dropped. An empty value is `(None, True)`: nothing to report.
- "Known" is not "has a WhatsApp template language": `bho` (Bhojpuri) is a known language code that
  WhatsApp has no templates for; template fallback is decided elsewhere.
"""

from __future__ import annotations

import difflib
import re

__all__ = [
    "GENRES", "LANGUAGES", "WHATSAPP_LANGUAGES", "canonical_city", "canonical_genre", "canonical_language",
    "canonical_tags", "closest_genre", "closest_language",
]

_SPACES = re.compile(r"\s+")

# Language codes WhatsApp templates use, plus Indian languages without a template language yet.
LANGUAGES: frozenset[str] = frozenset({
    "af", "ar", "as", "az", "bg", "bho", "bn", "bn_IN", "ca", "cs", "da", "de", "el", "en", "en_GB",
    "en_IN", "en_US", "es", "es_AR", "es_ES", "es_MX", "et", "fa", "fi", "fil", "fr", "ga", "gu", "ha",
    "he", "hi", "hne", "hr", "hu", "id", "it", "ja", "ka", "kk", "kn", "ko", "kok", "ks", "ky_KG", "lo",
    "lt", "lv", "mai", "mk", "ml", "mr", "ms", "nb", "ne", "nl", "or", "pa", "pl", "pt_BR", "pt_PT",
    "raj", "ro", "ru", "rw_RW", "sa", "sd", "sk", "sl", "sq", "sr", "sv", "sw", "ta", "te", "th", "tr",
    "uk", "ur", "uz", "vi", "zh_CN", "zh_HK", "zh_TW", "zu",
})

# The subset WhatsApp has template languages for (Meta's list as read in docs/whatsapp-cloud-api.md):
# contacts with another language get the campaign's fallback.
WHATSAPP_LANGUAGES: frozenset[str] = LANGUAGES - frozenset({
    "as", "bho", "hne", "kok", "ks", "mai", "ne", "or", "raj", "sa", "sd"})

_LANGUAGE_NAMES = {
    "hindi": "hi", "bengali": "bn", "bangla": "bn", "telugu": "te", "marathi": "mr", "tamil": "ta",
    "urdu": "ur", "kannada": "kn", "gujarati": "gu", "malayalam": "ml", "odia": "or", "oriya": "or",
    "punjabi": "pa", "panjabi": "pa", "assamese": "as", "bhojpuri": "bho", "haryanvi": "hne",
    "chhattisgarhi": "hne", "rajasthani": "raj", "english": "en", "konkani": "kok", "kashmiri": "ks",
    "maithili": "mai", "nepali": "ne", "sanskrit": "sa", "sindhi": "sd", "arabic": "ar",
    "spanish": "es", "portuguese": "pt_BR", "french": "fr", "german": "de",
    "हिंदी": "hi", "हिन्दी": "hi", "বাংলা": "bn", "తెలుగు": "te", "मराठी": "mr", "தமிழ்": "ta",
    "ಕನ್ನಡ": "kn", "ગુજરાતી": "gu", "മലയാളം": "ml", "ਪੰਜਾਬੀ": "pa", "اردو": "ur", "ଓଡ଼ିଆ": "or",
}
_LANGUAGE_BY_LOWER = {code.lower(): code for code in LANGUAGES}

GENRES: frozenset[str] = frozenset({
    "entertainment", "sports", "news", "humor", "lifestyle", "devotional", "education", "food", "music",
    "gaming", "tech", "travel", "fashion", "beauty", "fitness", "finance", "kids", "movies", "politics",
    "health", "auto", "business",
})

_GENRE_SYNONYMS = {
    "comedy": "humor", "humour": "humor", "funny": "humor", "memes": "humor", "standup": "humor",
    "stand up": "humor", "stand-up": "humor", "sport": "sports", "cricket": "sports",
    "entertain": "entertainment", "bhakti": "devotional", "spiritual": "devotional",
    "religious": "devotional", "devotion": "devotional", "edu": "education", "educational": "education",
    "edtech": "education", "cooking": "food", "recipes": "food", "foodie": "food", "songs": "music",
    "games": "gaming", "technology": "tech", "movie": "movies", "film": "movies", "films": "movies",
    "cinema": "movies", "fit": "fitness", "health & fitness": "fitness", "money": "finance",
    "automobile": "auto", "cars": "auto",
}


def _squash(raw: object) -> str:
    return _SPACES.sub(" ", str(raw)).strip()


def canonical_language(raw: object) -> tuple[str | None, bool]:
    """`Hindi`/`HI`/` hi` → ('hi', True); 'en-us' → ('en_US', True); 'klingon' → ('klingon', False)."""
    if raw is None:
        return None, True
    text = _squash(raw)
    if not text:
        return None, True
    lower = text.lower()
    code = _LANGUAGE_BY_LOWER.get(lower.replace("-", "_")) or _LANGUAGE_NAMES.get(lower)
    if code:
        return code, True
    return lower, False


def canonical_genre(raw: object) -> tuple[str | None, bool]:
    """`Comedy`/`humour` → ('humor', True); 'sports ' → ('sports', True); 'asmr' → ('asmr', False)."""
    if raw is None:
        return None, True
    lower = _squash(raw).lower()
    if not lower:
        return None, True
    if lower in GENRES:
        return lower, True
    synonym = _GENRE_SYNONYMS.get(lower)
    if synonym:
        return synonym, True
    return lower, False


def canonical_city(raw: object) -> str | None:
    """Trimmed, inner whitespace collapsed, case kept ('  new  delhi' → 'new delhi'); '' → None.

    Segments compare cities case-insensitively, so case is left as written.
    """
    if raw is None:
        return None
    text = _squash(raw)
    return text or None


_TAG_SPLIT = re.compile(r"[;,|]")


def canonical_tags(raw: object) -> tuple[str, ...]:
    """'Top100; agency_x,,new' or ['Top100', 'new'] → ('agency_x', 'new', 'top100'): lower, unique, sorted."""
    if raw is None:
        return ()
    parts: list[str] = []
    if isinstance(raw, list | tuple):
        for item in raw:
            if item is not None:
                parts.extend(_TAG_SPLIT.split(str(item)))
    else:
        parts = _TAG_SPLIT.split(str(raw))
    return tuple(sorted({_squash(p).lower() for p in parts} - {""}))


def closest_genre(raw: str) -> str | None:
    """The canonical genre a misspelt value most likely means ('comdy' → 'humor'), else None."""
    match = difflib.get_close_matches(_squash(raw).lower(), [*GENRES, *_GENRE_SYNONYMS], n=1, cutoff=0.7)
    return _GENRE_SYNONYMS.get(match[0], match[0]) if match else None


def closest_language(raw: str) -> str | None:
    """The language code a misspelt value most likely means ('hindee' → 'hi'), else None."""
    lower = _squash(raw).lower()
    match = difflib.get_close_matches(lower, [*_LANGUAGE_BY_LOWER, *_LANGUAGE_NAMES], n=1, cutoff=0.7)
    if not match:
        return None
    return _LANGUAGE_BY_LOWER.get(match[0]) or _LANGUAGE_NAMES[match[0]]
