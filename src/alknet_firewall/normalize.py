"""What the model sees: a normalised copy of the text (the forwarded text is never changed).

Disguises that change bytes but not meaning are undone before screening: compatibility forms
(NFKC: full-width letters, ligatures, mathematical alphabets), invisible format characters
(zero-width joiners, bidi controls, soft hyphens), Unicode tag characters (decoded to the ASCII
they smuggle), Cyrillic/Greek look-alikes inside Latin words, and runs of whitespace.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "normalize",
]


# Cyrillic and Greek letters that render like Latin ones.
_CONFUSABLES = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
        "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d",
        "ɡ": "g", "һ": "h", "ԛ": "q", "ԝ": "w", "А": "A", "В": "B", "Е": "E", "К": "K",
        "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "Х": "X", "І": "I",
        "Ј": "J", "Ѕ": "S", "α": "a", "ο": "o", "ρ": "p", "ν": "v", "ι": "i", "κ": "k",
        "τ": "t", "υ": "u", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I",
        "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    }
)  # fmt: skip
_LATIN = re.compile(r"[A-Za-z]")
_WORD = re.compile(r"\w+")
_SPACES = re.compile(r"[^\S\n]{2,}")
_NEWLINES = re.compile(r"\n{3,}")


def _strip_format(text: str) -> str:
    out = []
    for ch in text:
        cp = ord(ch)
        if 0xE0020 <= cp <= 0xE007E:  # tag characters: ASCII smuggling
            out.append(chr(cp - 0xE0000))
        elif unicodedata.category(ch) == "Cf" or 0xE0000 <= cp <= 0xE007F:
            continue
        else:
            out.append(ch)
    return "".join(out)


def _fix_mixed_script(match: re.Match[str]) -> str:
    word = match.group(0)
    if word.isascii() or not _LATIN.search(word):
        return word
    return word.translate(_CONFUSABLES)


def normalize(text: str) -> str:
    """Normalised copy of ``text`` for screening."""
    if text.isascii():
        s = text
    else:
        s = unicodedata.normalize("NFKC", _strip_format(text))
        s = _WORD.sub(_fix_mixed_script, s)
    if "  " in s or "\t" in s or "\n\n\n" in s:
        s = _SPACES.sub(" ", s)
        s = _NEWLINES.sub("\n\n", s)
    return s
