"""What depends on the language: codes and names, which way a script runs, and how BLEU tokenizes it.

manythings.org names its files after ISO 639-3 codes (`fra.txt` in `fra-eng.zip`, `cmn.txt` for Mandarin); a
charmt model records ISO 639-1 codes where one exists (`fr`, `zh`), as LibreTranslate and most tools use them.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from .errors import ConfigError

# ISO 639-3 (as manythings.org names its files) -> (ISO 639-1, or the 639-3 code where there is none; English name)
_MANYTHINGS = {
    "afr": ("af", "Afrikaans"), "ara": ("ar", "Arabic"), "arq": ("arq", "Algerian Arabic"),
    "aze": ("az", "Azerbaijani"), "bel": ("be", "Belarusian"), "ben": ("bn", "Bengali"), "ber": ("ber", "Berber"),
    "bos": ("bs", "Bosnian"), "bre": ("br", "Breton"), "bul": ("bg", "Bulgarian"), "cat": ("ca", "Catalan"),
    "cbk": ("cbk", "Chavacano"), "ceb": ("ceb", "Cebuano"), "ces": ("cs", "Czech"), "cha": ("ch", "Chamorro"),
    "cmn": ("zh", "Chinese"), "cym": ("cy", "Welsh"), "dan": ("da", "Danish"), "deu": ("de", "German"),
    "dtp": ("dtp", "Central Dusun"), "ell": ("el", "Greek"), "eng": ("en", "English"), "epo": ("eo", "Esperanto"),
    "est": ("et", "Estonian"), "eus": ("eu", "Basque"), "fin": ("fi", "Finnish"), "fra": ("fr", "French"),
    "fry": ("fy", "Frisian"), "gle": ("ga", "Irish"), "glg": ("gl", "Galician"), "heb": ("he", "Hebrew"),
    "hin": ("hi", "Hindi"), "hrv": ("hr", "Croatian"), "hun": ("hu", "Hungarian"), "hye": ("hy", "Armenian"),
    "ind": ("id", "Indonesian"), "isl": ("is", "Icelandic"), "ita": ("it", "Italian"), "jbo": ("jbo", "Lojban"),
    "jpn": ("ja", "Japanese"), "kab": ("kab", "Kabyle"), "kat": ("ka", "Georgian"), "kaz": ("kk", "Kazakh"),
    "khm": ("km", "Khmer"), "kor": ("ko", "Korean"), "kur": ("ku", "Kurdish"), "lit": ("lt", "Lithuanian"),
    "lvs": ("lv", "Latvian"), "mal": ("ml", "Malayalam"), "mar": ("mr", "Marathi"), "mkd": ("mk", "Macedonian"),
    "mon": ("mn", "Mongolian"), "mri": ("mi", "Maori"), "mya": ("my", "Burmese"), "nds": ("nds", "Low German"),
    "nld": ("nl", "Dutch"), "nob": ("nb", "Norwegian Bokmål"), "nno": ("nn", "Norwegian Nynorsk"),
    "pam": ("pam", "Kapampangan"), "pes": ("fa", "Persian"), "pol": ("pl", "Polish"), "por": ("pt", "Portuguese"),
    "ron": ("ro", "Romanian"), "rus": ("ru", "Russian"), "slk": ("sk", "Slovak"), "slv": ("sl", "Slovenian"),
    "spa": ("es", "Spanish"), "sqi": ("sq", "Albanian"), "srp": ("sr", "Serbian"), "swc": ("swc", "Congo Swahili"),
    "swe": ("sv", "Swedish"), "swh": ("sw", "Swahili"), "tam": ("ta", "Tamil"), "tat": ("tt", "Tatar"),
    "tel": ("te", "Telugu"), "tgl": ("tl", "Tagalog"), "tha": ("th", "Thai"), "tur": ("tr", "Turkish"),
    "uig": ("ug", "Uyghur"), "ukr": ("uk", "Ukrainian"), "urd": ("ur", "Urdu"), "uzb": ("uz", "Uzbek"),
    "vie": ("vi", "Vietnamese"), "yue": ("yue", "Cantonese"), "zsm": ("ms", "Malay"),
}
_NAMES = {code: name for code, name in _MANYTHINGS.values()}
# Written right to left (the web page lays these out with dir="rtl").
_RTL = {"ar", "arq", "fa", "he", "ug", "ur", "yi", "ps", "sd", "dv", "ku"}
_CODE = re.compile(r"[a-z]{2,3}(-[a-z0-9]{2,8})*")


def check_code(code: str) -> str:
    """`code` if it looks like an ISO 639 code (`fr`, `fra`; tags such as `pt-br` allowed), else ConfigError."""
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise ConfigError(f"{code!r} is not a language code like 'en', 'fr' or 'zh' (ISO 639-1 or 639-3, lower case)")
    return code


def iso_code(manythings_code: str) -> str | None:
    """'fra' -> 'fr'; None for a name manythings.org does not use."""
    entry = _MANYTHINGS.get(manythings_code.lower())
    return entry[0] if entry else None


def name_of(code: str | None) -> str:
    """'fr' -> 'French'; an unknown code is its own name."""
    if not code:
        return "unknown"
    return _NAMES.get(code, _NAMES.get(code.split("-")[0], code))


def is_rtl(code: str | None) -> bool:
    return bool(code) and code.split("-")[0] in _RTL


def languages_of_file(path: str | Path) -> tuple[str, str] | None:
    """(first column, second column) languages from a manythings file name: `fra.txt`, `fra-eng.zip` and
    `eng-fra.txt` all give ('en', 'fr'); None when the name does not say."""
    parts = re.split(r"[-_.]", Path(path).name.lower())
    known = [iso_code(p) for p in parts if iso_code(p)]
    others = [code for code in known if code != "en"]
    if len(others) == 1:  # manythings files always hold English in the first column
        return "en", others[0]
    return None


# --- sentences ----------------------------------------------------------------------------------------------

# Scripts written without spaces between words: sentences are joined without one, and BLEU needs a tokenizer of
# its own (or characters) to see words at all.
_NO_SPACES = {"zh", "ja", "yue", "th", "lo", "km", "my", "bo"}
# Sentence-final punctuation with something after it: only such a text can hold two sentences.
_MAYBE_SEVERAL = re.compile(r"[.!?…。！？｡‼⁇⁈⁉؟।॥።][^\w]*\s*\w")


def split_sentences(text: str, lang: str | None = "en") -> list[str]:
    """The sentences of a paragraph in language `lang`, stripped; abbreviations ("Mr. Smith", "z. B.") and numbers
    ("3.5") do not end a sentence, and 。！？ do without a space after them.

    pySBD for the 23 languages it knows (it measured best: benchmarks/measure_splitting.py), sentencex for the
    others (about 300 languages); a text without a sentence end inside it is returned as it is, unsplit.
    """
    text = text.strip()
    if not text:
        return []
    if not _MAYBE_SEVERAL.search(text):
        return [text]
    base = (lang or "en").split("-")[0]
    return [s.strip() for s in _segmenter(base)(text) if s.strip()] or [text]


@functools.cache
def _segmenter(lang: str):
    import pysbd

    if lang in pysbd.languages.LANGUAGE_CODES:
        return pysbd.Segmenter(language=lang, clean=False).segment
    from sentencex import segment

    return functools.partial(segment, lang)


def join_sentences(sentences: list[str], lang: str | None) -> str:
    """Sentences of `lang` written one after the other: with a space, or without one for scripts that use none."""
    return ("" if (lang or "").split("-")[0] in _NO_SPACES else " ").join(sentences)


# --- scores ---------------------------------------------------------------------------------------------------


def bleu_tokenizer(lang: str | None) -> tuple[str, str | None]:
    """sacrebleu's tokenizer for BLEU on text in `lang`, and a note when a better one is not installed.

    BLEU counts words; Chinese and Japanese write none apart, so the default tokenizer would see one "word" per
    sentence: "zh" segments Chinese, "ja-mecab" Japanese (MeCab, `pip install 'charmt[ja]'`), "char" the rest.
    """
    base = (lang or "").split("-")[0]
    if base in ("zh", "yue"):
        return "zh", None
    if base == "ja":
        if _mecab_works():
            return "ja-mecab", None
        return "char", "Japanese BLEU on characters (install MeCab for word BLEU: pip install 'charmt[ja]')"
    if base in _NO_SPACES:
        return "char", None
    return "13a", None


@functools.cache
def _mecab_works() -> bool:
    try:
        from sacrebleu.tokenizers.tokenizer_ja_mecab import TokenizerJaMecab

        TokenizerJaMecab()
        return True
    except (ImportError, RuntimeError, OSError):
        return False
