"""Finding personal data in a text: where, what kind, the value. Pure.

Precision comes before recall, because a report that cries wolf on order numbers
and version strings is soon ignored:

- email: local@domain.tld, the TLD alphabetic (2-24 letters) and not a file
  extension (``logo@2x.png``); ``user@host`` and ``@decorator`` are not addresses.
- phone: Google's libphonenumber (``phonenumbers``) ``PhoneNumberMatcher`` at
  STRICT_GROUPING leniency, in the region given (default US; ``+`` numbers of
  every region), and never a bare run of digits (an order number).
- card: 13-19 digits (single spaces or dashes between groups) with a known
  issuer prefix (Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay) and a
  valid Luhn check digit.
- iban: a country code with that country's IBAN length and the ISO 13616
  mod-97 check (done here: schwifty would add pycountry's data for one check).
- ip: IPv4 and IPv6 addresses ``ipaddress`` accepts that are global (private,
  loopback and documentation addresses identify no one) and, for IPv4, not four
  single digits (``1.2.3.4`` is a version far more often than a host) nor
  preceded by ``v``, ``version``, ``/`` or ``-`` (``version 5.15.0.91``,
  ``nginx/1.25.3.1``: versions; ``http://8.8.8.8`` is still an address).
- secret: API keys and tokens of well-known shapes (``SECRETS``).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

KINDS = ("email", "phone", "card", "iban", "ip", "secret")
DEFAULT_REGION = "US"

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24}))(?![\w-])"
)
FILE_EXTENSIONS = frozenset(
    [
        "png",
        "jpg",
        "jpeg",
        "gif",
        "svg",
        "webp",
        "ico",
        "pdf",
        "txt",
        "md",
        "json",
        "yaml",
        "yml",
        "toml",
        "csv",
        "py",
        "js",
        "ts",
        "tsx",
        "jsx",
        "css",
        "html",
        "htm",
        "xml",
        "sh",
        "rs",
        "go",
        "java",
        "rb",
        "php",
        "c",
        "h",
        "cpp",
        "hpp",
        "zip",
        "gz",
        "tar",
        "log",
        "ini",
        "cfg",
        "lock",
    ]
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_CARD_PREFIXES = re.compile(
    r"^(?:4|5[1-5]|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[47]|6011|64[4-9]|65"
    r"|30[0-5]|36|38|39|35(?:2[89]|[3-8]\d)|62)"
)
_IBAN = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30})(?![A-Za-z0-9])")
# ISO 13616 registry: IBAN length per country
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
# four groups at least: "cafe::babe" or a C++ "a::b" is no address anyone has
_IPV6 = re.compile(r"(?<![\w:.])(?=(?:[0-9A-Fa-f]*:){3})[0-9A-Fa-f:]{5,39}(?![\w:])")
# (name, pattern): the whole match is the secret, or its group 1 where it has one
SECRETS = (
    ("openai", r"\bsk-(?:proj-|svcacct-|admin-|ant-)?(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{20,}"),
    ("stripe", r"\b[rs]k_live_[0-9A-Za-z]{20,}"),
    ("github", r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,})\b"),
    ("aws", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("slack", r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    ("google", r"\bAIza[0-9A-Za-z_-]{35}\b"),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}"),
    ("bearer", r"\bBearer\s+([A-Za-z0-9._~+/-]{20,}=*)"),
)
_SECRETS = [(name, re.compile(pattern)) for name, pattern in SECRETS]
# cheap gates: most text has no key prefix, no @, no digit, and is spared those searches
# every pattern in SECRETS holds one of these: sk-, k_live_, gh[pousr]_, github_pat_, AKIA,
# ASIA, AIza, xox, eyJ, Bearer; each alternative starts at a rare character (the search
# stops only at k _ A x J B, not at every s or e of English) and looks behind for the rest
_SECRET_HINT = re.compile(
    r"k(?<=sk)-|k_live_|_(?<=gh[pousr]_)|_(?<=github_)pat_|AKIA|ASIA|AIza|xox|J(?<=eyJ)|Bearer"
)
_DIGIT = re.compile(r"\d")
_CARD_HINT = re.compile(r"\d{4}")  # every card format has a group of four digits
_IBAN_HINT = re.compile(r"[A-Z]{2}\d\d")
_IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d")
# what a four-part version number follows; "//" (a URL's host) is not one of them
_VERSION_BEFORE = re.compile(r"(?:\b[vV]|\b[vV]ersion|(?<![/:])/|-) ?$")
_PHONE_HINT = re.compile(r"\d[\d ().\-/]{5,}\d")  # a phone number has 7 digits close together


@dataclass(frozen=True)
class Found:
    kind: str
    start: int
    end: int
    value: str


# every detector's gate in find_all, in two searches: where neither matches and fewer
# than three colons (the IPv6 gate), no detector runs and find is empty. Cards need
# 13 digits with single separators between them, which the phone hint matches too.
_MAYBE_TEXT = re.compile(r"@|" + _SECRET_HINT.pattern)
_MAYBE_DIGITS = re.compile(r"\d(?:[\d ().\-/]{5,}\d|\.\d|(?<=[A-Z]{2}\d)\d)")
# in an ASCII text \d is [0-9], which the search tests faster than Unicode's digits
_MAYBE_DIGITS_ASCII = re.compile(_MAYBE_DIGITS.pattern, re.ASCII)


def maybe(text: str) -> bool:
    """Whether ``find`` could find anything in ``text``: False only when it cannot.

    Where a gate matches in part of a text it matches in the whole (none looks outside
    the text it matches), so a raw JSON string without escapes answers for its values."""
    return (
        _MAYBE_TEXT.search(text) is not None
        or (_MAYBE_DIGITS_ASCII if text.isascii() else _MAYBE_DIGITS).search(text) is not None
        or text.count(":") >= 3
    )


def find(text: str, region: str | None = DEFAULT_REGION) -> tuple[Found, ...]:
    """The personal data in ``text``, in order, never overlapping (a secret or an address
    wins over a phone number read inside it)."""
    return find_all(text, region) if maybe(text) else ()


@functools.lru_cache(maxsize=4096)  # the training prompt is the same in every example
def find_all(text: str, region: str | None = DEFAULT_REGION) -> tuple[Found, ...]:
    """``find`` without its pre-check: every detector behind its own gate."""
    candidates = _secrets(text) if _SECRET_HINT.search(text) else []
    candidates += _emails(text) if "@" in text else []
    if _DIGIT.search(text) or text.count(":") >= 3:
        candidates += _cards(text) if _CARD_HINT.search(text) else []
        candidates += _ibans(text) if _IBAN_HINT.search(text) else []
        candidates += [*_ips(text), *_phones(text, region)]
    kept: list[Found] = []
    for f in candidates:  # in priority order: earlier kinds win an overlap
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return tuple(sorted(kept, key=lambda f: f.start))


def _secrets(text: str) -> list[Found]:
    out = []
    for _name, pattern in _SECRETS:
        for m in pattern.finditer(text):
            g = 1 if pattern.groups else 0
            out.append(Found("secret", m.start(g), m.end(g), m.group(g)))
    return out


def _emails(text: str) -> list[Found]:
    return [
        Found("email", m.start(), m.end(), m.group())
        for m in _EMAIL.finditer(text)
        if m.group(2).lower() not in FILE_EXTENSIONS
    ]


def _cards(text: str) -> list[Found]:
    out = []
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and _CARD_PREFIXES.match(digits) and luhn(digits):
            out.append(Found("card", m.start(), m.end(), m.group()))
    return out


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _ibans(text: str) -> list[Found]:
    out = []
    for m in _IBAN.finditer(text):
        raw = m.group(1).rstrip()
        compact = raw.replace(" ", "")
        if IBAN_LENGTHS.get(compact[:2]) == len(compact) and iban_valid(compact):
            out.append(Found("iban", m.start(1), m.start(1) + len(raw), raw))
    return out


def iban_valid(compact: str) -> bool:
    """ISO 13616: the country code and check digits moved to the end, read as a number
    with A=10..Z=35, leave 1 modulo 97."""
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return number.isdigit() and int(number) % 97 == 1


def _ips(text: str) -> list[Found]:
    out = []
    for m in _IPV4.finditer(text) if _IPV4_HINT.search(text) else ():
        octets = m.group().split(".")
        if all(len(o) == 1 for o in octets):
            continue  # 1.2.3.4: a version number
        if _VERSION_BEFORE.search(text, max(0, m.start() - 9), m.start()):
            continue  # version 5.15.0.91, nginx/1.25.3.1
        if _global_ip(m.group()):
            out.append(Found("ip", m.start(), m.end(), m.group()))
    for m in _IPV6.finditer(text) if text.count(":") >= 3 else ():
        if _global_ip(m.group()):
            out.append(Found("ip", m.start(), m.end(), m.group()))
    return out


def _global_ip(value: str) -> bool:
    try:
        return ipaddress.ip_address(value).is_global
    except ValueError:
        return False


def _phones(text: str, region: str | None) -> list[Found]:
    if not any(sum(c.isdigit() for c in m.group()) >= 7 for m in _PHONE_HINT.finditer(text)):
        return []
    import phonenumbers  # 20 ms to load its metadata: only for texts with 7+ digits

    out = []
    try:
        matcher = phonenumbers.PhoneNumberMatcher(
            text, region, leniency=phonenumbers.Leniency.STRICT_GROUPING
        )
        for m in matcher:
            raw = m.raw_string
            if raw.isdigit():
                continue  # a bare run of digits is an order or an account number as often
            out.append(Found("phone", m.start, m.end, raw))
    except Exception:  # the library on a text it chokes on: no phone found, never a crash
        return out
    return out
