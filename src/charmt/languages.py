"""What depends on the language: codes and names, which way a script runs, and how BLEU tokenizes it.

manythings.org names its files after ISO 639-3 codes (`fra.txt` in `fra-eng.zip`, `cmn.txt` for Mandarin); a
charmt model records ISO 639-1 codes where one exists (`fr`, `zh`), as LibreTranslate and most tools use them.
"""

from __future__ import annotations

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
