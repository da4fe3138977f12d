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
# Sentence-final punctuation; a text can only hold two sentences where a word comes after one.
_SENTENCE_END = re.compile(r"[.!?…。！？｡‼⁇⁈⁉؟।॥።]")
_WORD = re.compile(r"\w")
# The splitter reads a long text in windows of this many characters: pySBD takes time quadratic in the number of
# sentences it is given (a 4,000-character run of "a. " takes 12x as long as 1,000 characters), so each call gets a
# bounded piece and the whole text is split in time linear in its length.
_WINDOW = 1000
# A bracketed list of numbers longer than a citation ("[1]", "[12-14]", "[1, 4, 7]"): after a period, pySBD's
# numbered-reference rule backtracks exponentially on it (pySBD issue #79: 20 digits after ".[" take 70 ms, each
# more digit about twice as long). Its bracket is hidden from pySBD whatever comes before, as pySBD deletes some
# characters (☝, which it also reads in the list) before that rule runs.
_LONG_REFERENCE = re.compile(r"\[(?=[\[\]\d\s,☝-]{11})")
_NOT_A_BRACKET = "\ue000"  # in place of that bracket, one character for one, so that offsets do not move


def split_sentences(text: str, lang: str | None = "en") -> list[str]:
    """The sentences of a paragraph in language `lang`, stripped; abbreviations ("Mr. Smith", "z. B.") and numbers
    ("3.5") do not end a sentence, and 。！？ do without a space after them.

    pySBD for the 23 languages it knows (it measured best: benchmarks/measure_splitting.py), sentencex for the
    others (about 300 languages); a text without a sentence end inside it is returned as it is, unsplit. Time is
    linear in the text's length whatever it holds, and the sentences joined hold every character of the text but
    its spaces: a sentence longer than half a window (500 characters) may be cut at a space.
    """
    text = text.strip()
    if not text:
        return []
    end = _SENTENCE_END.search(text)
    if not end or not _WORD.search(text, end.end()):
        return [text]
    split = _splitter((lang or "en").split("-")[0])
    sentences, start = [], 0
    while start < len(text):
        window = text[start : start + _WINDOW]
        ends = _sentence_ends(window, split)
        if start + _WINDOW >= len(text):
            ends = ends[:-1] + [len(window)]  # the last sentence takes whatever the splitter left at the end
        else:
            ends = ends[:-1]  # the window's last sentence may go on after it: the next window starts there
            if not ends or ends[-1] < _WINDOW // 2:  # ... unless that moves on too little: cut at a space
                ends.append(window.rfind(" ", _WINDOW // 2) + 1 or _WINDOW)
        cut = 0
        for end in ends:
            sentences.append(window[cut:end].strip())
            cut = end
        start += cut
    return [s for s in sentences if s]


def _sentence_ends(text: str, split) -> list[int]:
    """Where each sentence `split` finds in `text` ends (text it leaves out goes with the sentence after it)."""
    text = _LONG_REFERENCE.sub(_NOT_A_BRACKET, text)
    ends, position = [], 0
    for sentence in split(text):
        found = text.find(sentence.strip(), position) if sentence.strip() else -1
        if found >= 0:
            position = found + len(sentence.strip())
            ends.append(position)
    return ends


@functools.cache
def _splitter(lang: str):
    import pysbd

    if lang in pysbd.languages.LANGUAGE_CODES:
        # A segmenter of its own for every call: its segment() keeps the text it works on in the segmenter. Its
        # processor gives the sentences without segment()'s search for each in the text, which takes time quadratic
        # in their number (_sentence_ends finds them, in linear time).
        return lambda text: pysbd.Segmenter(language=lang, clean=False).processor(text).process()
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
