"""Pure text normalization shared by the room projection (search columns) and the search queries.

Contact search must be case- and accent-insensitive and find phone numbers however they are
written, so the projection stores normalized forms and the query normalizes its input the same way:

- `search_name`: contact name and handle, NFKD-decomposed with combining marks removed,
  case-folded, whitespace collapsed ("Budí  Santoso", "@budi.s" → "budi santoso budi.s").
- `phone_digits`: the national significant number, digits only, without the trunk prefix `0` or
  the country code (`+62 812-3456-7890`, `0812 3456 7890` and `6281234567890` → "81234567890").
"""

from __future__ import annotations

import re
import unicodedata

# Numbers are stored without this country code (Indonesia), so local (0812…) and international
# (+62 812…, 62812…) spellings of the same number compare equal.
DEFAULT_COUNTRY_CODE = "62"
PHONE_CHANNELS = frozenset({"whatsapp_cloud"})  # the contact id is the customer's phone number (wa_id)

_SPACES = re.compile(r"\s+")
_PHONE_QUERY = re.compile(r"^[\d\s()+\-./]+$")
_WORD = re.compile(r"\w+", re.UNICODE)


def fold(text: str | None) -> str:
    """Lower-case, accents stripped, whitespace collapsed: the form both sides of a search compare in."""
    if not text:
        return ""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACES.sub(" ", stripped.casefold()).strip()


def search_name(name: str | None, handle: str | None) -> str | None:
    parts = [fold(name), fold(handle).lstrip("@")]
    value = " ".join(p for p in parts if p)
    return value or None


def national_digits(raw: str | None, country_code: str = DEFAULT_COUNTRY_CODE) -> str:
    """Digits of a phone number without trunk prefix or country code; '' when there are none."""
    if not raw:
        return ""
    digits = "".join(c for c in raw if c.isdigit())
    if digits.startswith("00"):  # international dialing prefix
        digits = digits[2:]
    if digits.startswith(country_code):
        return digits[len(country_code):]
    if digits.startswith("0"):
        return digits.lstrip("0")
    return digits


def phone_digits(channel: str, contact_id: str, phone: str | None) -> str | None:
    """What the projection stores for phone search: the contact's phone, or the WhatsApp id."""
    source = phone or (contact_id if channel in PHONE_CHANNELS else None)
    return national_digits(source) or None


def name_query(q: str) -> str:
    """A contact-search query in the stored form of `search_name` (a leading '@' of a handle dropped)."""
    return fold(q).lstrip("@").strip()


def phone_query(q: str) -> str | None:
    """Normalized digits when the query looks like (part of) a phone number, else None."""
    if not _PHONE_QUERY.match(q.strip()):
        return None
    digits = national_digits(q)
    return digits if len(digits) >= 3 else None


def has_words(q: str) -> bool:
    """Whether a search text has anything to search for (letters or digits)."""
    return bool(_WORD.search(q.replace("_", " ")))
