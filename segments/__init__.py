"""Audience logic, pure: phone numbers, canonical values, contact files, rows, segment filters.

Layering: cli → broadcaster → segments. This package never imports `broadcaster` and does no I/O
beyond reading the contact file it is given; the database side of imports and segments lives in
`broadcaster.contacts` and `broadcaster.segment_store`.

    phones    normalize_phone (→ WhatsApp digits), InvalidPhone(reason), mask_phone
    canon     canonical_language / canonical_genre / canonical_city / canonical_tags
    parsing   open_contact_file: CSV or JSON Lines → RawRow (file-level errors: FileFormatError)
    rows      clean_row: RawRow → ContactRow | Rejection(reason, field)
    filters   SegmentFilter (validated, JSON round trip) and compile_filter → SQL with $n parameters
"""

from segments.canon import canonical_genre, canonical_language
from segments.errors import FileFormatError, FilterError, InvalidPhone, SegmentsError
from segments.filters import SegmentFilter, compile_filter
from segments.phones import mask_phone, normalize_phone

__all__ = [
    "FileFormatError", "FilterError", "InvalidPhone", "SegmentFilter", "SegmentsError", "canonical_genre",
    "canonical_language", "compile_filter", "mask_phone", "normalize_phone",
]
