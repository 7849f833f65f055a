"""Is a text English? A cheap, dependency-free guess used to treat other languages fairly.

The activation model (SmolLM2-135M) reads English far better than other languages, and the
codebook is fitted on English texts, so a French question can look "unusual" for being French.
The firewall therefore asks this module whether a screened text is English; for texts that are
not, the policy's ``languages`` rule applies (``docs/adr/0006-detection-v2.md``): by default the
level is lowered by one step and the verdict carries the note ``unsupported_language:<code>``.

The guess is rule-based and deterministic: the share of letters in non-Latin scripts, and for
Latin-script texts the share of common function words of English versus French, German,
Spanish, Italian, Portuguese and Dutch. Texts too short or too symbol-heavy to tell (code,
tables, a few words) count as English: the rule only ever relaxes a verdict when it is sure.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["LanguageGuess", "guess_language"]

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def _vocab(words: str) -> frozenset[str]:
    return frozenset(words.split())


_EN = _vocab(
    """the a an and or but of to in on at for with from by about as into is are was were be been
    being have has had do does did not no this that these those it its i you he she we they me my
    your our their what which who whom how why when where there here can could would should will
    shall may might must if then than so just also very all any some more most other such only
    own same too up down out over under again further once please tell give write make explain
    help show list describe how's what's i'm don't it's you're let's"""
)
_OTHER: dict[str, frozenset[str]] = {
    "fr": _vocab(
        """le la les un une des du de et ou mais est sont être avoir ai as avez ont pour dans sur
        avec par pas ne que qui quoi quel quelle comment pourquoi quand où je tu il elle nous vous
        ils elles mon ma mes ton ta votre vos leur ce cette ces au aux est-ce très aussi plus
        moins bien faire peux pouvez voudrais s'il merci"""
    ),
    "de": _vocab(
        """der die das ein eine einen einem und oder aber ist sind war waren sein haben hat habe
        für mit von zu im auf nicht kein keine was wer wie warum wann wo ich du er sie wir ihr
        mein meine dein deine unser euer dem den des bitte kann können möchte sehr auch noch nur
        schon wenn dass"""
    ),
    "es": _vocab(
        """el la los las un una unos unas y o pero es son ser estar está están tener tiene para
        por con sin en sobre no que qué quién cómo por qué cuándo dónde yo tú él ella nosotros
        vosotros ellos mi mis tu tus su sus muy también más menos puedo puedes quiero gracias
        del al"""
    ),
    "it": _vocab(
        """il lo la i gli le un uno una e o ma è sono essere avere ha hanno per con su non che chi
        come perché quando dove io tu lui lei noi voi loro mio mia tuo tua suo sua molto anche
        più meno posso puoi vorrei grazie del della dei nel nella"""
    ),
    "pt": _vocab(
        """o a os as um uma uns umas e ou mas é são ser estar está estão ter tem para por com sem
        qual melhor em sobre não que quem como porque quando onde eu tu ele ela nós vós eles
        elas meu minha seu sua muito também mais menos posso pode quero obrigado do da dos das
        no na"""
    ),
    "nl": _vocab(
        """de het een en of maar is zijn was waren hebben heeft voor met van te in op niet geen wat
        wie hoe waarom wanneer waar ik jij je hij zij wij jullie mijn jouw ons onze dit dat deze
        die kan kunnen wil graag ook nog alleen al als"""
    ),
}
#: Words shared with English carry no evidence; nor do one-letter words ("a" is also
#: Portuguese, Spanish and Italian, "i" Italian).
_OTHER = {k: v - _EN for k, v in _OTHER.items()}
_EN = frozenset(w for w in _EN if len(w) > 1)

#: Scripts by the first word of a character's Unicode name.
_LATIN = "LATIN"
_MIN_LETTERS = 12
_MIN_WORDS = 4


@dataclass(frozen=True)
class LanguageGuess:
    """``code`` is ``"en"`` for English (or "cannot tell"), else a language or script code."""

    code: str
    #: Share of the evidence for ``code`` (0..1); 0 when the text was too short to tell.
    confidence: float

    @property
    def english(self) -> bool:
        return self.code == "en"


_SCRIPT_CODES = {
    "CJK": "zh",
    "HIRAGANA": "ja",
    "KATAKANA": "ja",
    "HANGUL": "ko",
    "CYRILLIC": "ru",
    "ARABIC": "ar",
    "HEBREW": "he",
    "DEVANAGARI": "hi",
    "GREEK": "el",
    "THAI": "th",
    "BENGALI": "bn",
    "TAMIL": "ta",
    "TELUGU": "te",
    "KANNADA": "kn",
    "MALAYALAM": "ml",
    "GUJARATI": "gu",
    "GURMUKHI": "pa",
    "SINHALA": "si",
    "GEORGIAN": "ka",
    "ARMENIAN": "hy",
    "ETHIOPIC": "am",
    "KHMER": "km",
    "LAO": "lo",
    "MYANMAR": "my",
}


def _script(ch: str) -> str:
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return "OTHER"
    return name.split(" ", 1)[0]


def guess_language(text: str, *, sample_chars: int = 4000) -> LanguageGuess:
    """Guess whether ``text`` is English from its first ``sample_chars`` characters."""
    sample = text[:sample_chars]
    letters = [ch for ch in sample if ch.isalpha()]
    if len(letters) < _MIN_LETTERS:
        return LanguageGuess("en", 0.0)
    scripts: dict[str, int] = {}
    for ch in letters:
        s = _script(ch)
        scripts[s] = scripts.get(s, 0) + 1
    latin = scripts.get(_LATIN, 0)
    other_script, other_count = max(
        ((s, n) for s, n in scripts.items() if s != _LATIN), key=lambda x: x[1], default=("", 0)
    )
    if other_count > 0.3 * len(letters):
        if other_script in ("HIRAGANA", "KATAKANA") or (
            other_script == "CJK" and (scripts.get("HIRAGANA", 0) + scripts.get("KATAKANA", 0))
        ):
            return LanguageGuess("ja", other_count / len(letters))
        code = _SCRIPT_CODES.get(other_script, other_script.lower()[:8])
        return LanguageGuess(code, other_count / len(letters))
    words = [w.lower() for w in _WORD.findall(sample)]
    if len(words) < _MIN_WORDS or latin < _MIN_LETTERS:
        return LanguageGuess("en", 0.0)
    en = sum(w in _EN for w in words)
    best, best_n = "en", 0
    for code, vocab in _OTHER.items():
        n = sum(w in vocab for w in words)
        if n > best_n:
            best, best_n = code, n
    # Another language needs clear evidence: more of its function words than English ones,
    # at least two, and a real share of the text.
    if best != "en" and best_n >= 2 and best_n > 1.5 * en and best_n >= 0.12 * len(words):
        return LanguageGuess(best, best_n / max(best_n + en, 1))
    return LanguageGuess("en", en / max(len(words), 1))
