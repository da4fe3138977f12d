#!/usr/bin/env python3
"""Generate charmt's built-in English-French demo corpus.

The corpus is produced from a small hand-written grammar (below) and written
to ``src/charmt/demo/eng-fra.txt`` in the Anki format: one pair per line,
``English<TAB>French``, UTF-8, LF line endings, no header.

The script uses the standard library only, reads no input files and is
deterministic: running it twice gives byte-identical output.

    python tools/make_demo_corpus.py            # writes the default file
    python tools/make_demo_corpus.py -o out.txt # writes elsewhere
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

SEED = 20240601
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src" / "charmt" / "demo" / "eng-fra.txt"

# --------------------------------------------------------------------------
# Lexicon
# --------------------------------------------------------------------------

# Present-tense conjugation tables, one form per French subject pronoun.
PRONOUNS = ("je", "tu", "il", "elle", "nous", "vous", "ils", "elles")


def _table(je, tu, il, nous, vous, ils):
    return dict(zip(PRONOUNS, (je, tu, il, il, nous, vous, ils, ils), strict=True))


# key: (English base form, English 3rd person singular, French table)
VERBS = {
    "be": ("are", "is", _table("suis", "es", "est", "sommes", "êtes", "sont")),
    "have": ("have", "has", _table("ai", "as", "a", "avons", "avez", "ont")),
    "like": ("like", "likes", _table("aime", "aimes", "aime", "aimons", "aimez", "aiment")),
    "eat": ("eat", "eats", _table("mange", "manges", "mange", "mangeons", "mangez", "mangent")),
    "drink": ("drink", "drinks", _table("bois", "bois", "boit", "buvons", "buvez", "boivent")),
    "see": ("see", "sees", _table("vois", "vois", "voit", "voyons", "voyez", "voient")),
    "want": ("want", "wants", _table("veux", "veux", "veut", "voulons", "voulez", "veulent")),
    "look for": (
        "look for",
        "looks for",
        _table("cherche", "cherches", "cherche", "cherchons", "cherchez", "cherchent"),
    ),
    "read": ("read", "reads", _table("lis", "lis", "lit", "lisons", "lisez", "lisent")),
    "take": ("take", "takes", _table("prends", "prends", "prend", "prenons", "prenez", "prennent")),
    "buy": ("buy", "buys", _table("achète", "achètes", "achète", "achetons", "achetez", "achètent")),
    "speak": ("speak", "speaks", _table("parle", "parles", "parle", "parlons", "parlez", "parlent")),
    "open": ("open", "opens", _table("ouvre", "ouvres", "ouvre", "ouvrons", "ouvrez", "ouvrent")),
    "go": ("go", "goes", _table("vais", "vas", "va", "allons", "allez", "vont")),
}


class Subject:
    """A sentence subject: English text, French text, French pronoun person."""

    def __init__(self, en, fr, person, gender="m"):
        self.en, self.fr, self.person, self.gender = en, fr, person, gender

    @property
    def third_singular(self):
        return self.person in ("il", "elle")

    @property
    def plural(self):
        return self.person in ("nous", "vous", "ils", "elles")


# "you" is rendered as "tu" in statements and as "vous" in questions, so each
# English sentence has exactly one French translation in the corpus.
SUBJECTS = [
    Subject("I", "je", "je"),
    Subject("you", "tu", "tu"),
    Subject("he", "il", "il"),
    Subject("she", "elle", "elle", "f"),
    Subject("we", "nous", "nous"),
    Subject("they", "ils", "ils"),
    Subject("my brother", "mon frère", "il"),
    Subject("my sister", "ma sœur", "elle", "f"),
    Subject("the children", "les enfants", "ils"),
    Subject("my sisters", "mes sœurs", "elles", "f"),
    Subject("Paul", "Paul", "il"),
    Subject("Marie", "Marie", "elle", "f"),
]
YOU_FORMAL = Subject("you", "vous", "vous")
QUESTION_SUBJECTS = [YOU_FORMAL] + [s for s in SUBJECTS if s.person in ("il", "elle", "ils", "elles")]


class Noun:
    """A noun with its gender, plural forms and the verbs it goes with."""

    def __init__(self, en, fr, gender, kinds, en_pl=None, fr_pl=None, mass=False):
        self.en, self.fr, self.gender = en, fr, gender
        self.kinds = set(kinds.split())
        self.en_pl = en_pl or en + "s"
        self.fr_pl = fr_pl or fr + "s"
        self.mass = mass  # uncountable: "water", "bread", "rain"


# kinds: food drink read obj open take animal place weather
NOUNS = [
    Noun("apple", "pomme", "f", "food"),
    Noun("bread", "pain", "m", "food", mass=True),
    Noun("cake", "gâteau", "m", "food", fr_pl="gâteaux"),
    Noun("cheese", "fromage", "m", "food", mass=True),
    Noun("orange", "orange", "f", "food"),
    Noun("egg", "œuf", "m", "food"),
    Noun("soup", "soupe", "f", "food", mass=True),
    Noun("water", "eau", "f", "drink", mass=True),
    Noun("milk", "lait", "m", "drink", mass=True),
    Noun("tea", "thé", "m", "drink", mass=True),
    Noun("coffee", "café", "m", "drink", mass=True),
    Noun("juice", "jus", "m", "drink", fr_pl="jus", mass=True),
    Noun("book", "livre", "m", "read obj"),
    Noun("letter", "lettre", "f", "read open"),
    Noun("newspaper", "journal", "m", "read", fr_pl="journaux"),
    Noun("map", "carte", "f", "read obj"),
    Noun("car", "voiture", "f", "obj"),
    Noun("bike", "vélo", "m", "obj"),
    Noun("key", "clé", "f", "obj take"),
    Noun("bag", "sac", "m", "obj take open"),
    Noun("hat", "chapeau", "m", "obj take", fr_pl="chapeaux"),
    Noun("umbrella", "parapluie", "m", "obj take"),
    Noun("door", "porte", "f", "open"),
    Noun("window", "fenêtre", "f", "open"),
    Noun("box", "boîte", "f", "obj open", en_pl="boxes"),
    Noun("train", "train", "m", "ride"),
    Noun("bus", "bus", "m", "ride", en_pl="buses", fr_pl="bus"),
    Noun("cat", "chat", "m", "animal"),
    Noun("dog", "chien", "m", "animal"),
    Noun("bird", "oiseau", "m", "animal", fr_pl="oiseaux"),
    Noun("horse", "cheval", "m", "animal", fr_pl="chevaux"),
    Noun("cow", "vache", "f", "animal"),
    Noun("station", "gare", "f", "place"),
    Noun("museum", "musée", "m", "place"),
    Noun("bank", "banque", "f", "place"),
    Noun("beach", "plage", "f", "place", en_pl="beaches"),
    Noun("market", "marché", "m", "place"),
    Noun("hotel", "hôtel", "m", "place"),
    Noun("park", "parc", "m", "place"),
    Noun("rain", "pluie", "f", "weather", mass=True),
    Noun("snow", "neige", "f", "weather", mass=True),
    Noun("winter", "hiver", "m", "weather", mass=True),
    Noun("music", "musique", "f", "weather", mass=True),
]


def nouns(kind, countable=None):
    out = [n for n in NOUNS if kind in n.kinds]
    if countable is not None:
        out = [n for n in out if n.mass != countable]
    return out


class Adjective:
    """French forms m, f, m.pl, f.pl; 'pre' adjectives go before the noun."""

    def __init__(self, en, m, f, mpl, fpl, pre=False, m_vowel=None):
        self.en, self.pre = en, pre
        self.forms = {("m", False): m, ("f", False): f, ("m", True): mpl, ("f", True): fpl}
        self.m_vowel = m_vowel  # "nouvel", "vieil" before a vowel

    def fr(self, gender, plural, next_word=None):
        if self.m_vowel and gender == "m" and not plural and next_word and starts_with_vowel(next_word):
            return self.m_vowel
        return self.forms[(gender, plural)]


ADJ = {
    "small": Adjective("small", "petit", "petite", "petits", "petites", pre=True),
    "big": Adjective("big", "grand", "grande", "grands", "grandes", pre=True),
    "new": Adjective("new", "nouveau", "nouvelle", "nouveaux", "nouvelles", pre=True, m_vowel="nouvel"),
    "old": Adjective("old", "vieux", "vieille", "vieux", "vieilles", pre=True, m_vowel="vieil"),
    "red": Adjective("red", "rouge", "rouge", "rouges", "rouges"),
    "blue": Adjective("blue", "bleu", "bleue", "bleus", "bleues"),
    "black": Adjective("black", "noir", "noire", "noirs", "noires"),
    "white": Adjective("white", "blanc", "blanche", "blancs", "blanches"),
    "tired": Adjective("tired", "fatigué", "fatiguée", "fatigués", "fatiguées"),
    "happy": Adjective("happy", "content", "contente", "contents", "contentes"),
    "sad": Adjective("sad", "triste", "triste", "tristes", "tristes"),
}
COLOURS = ["red", "blue", "black", "white"]
SIZES = ["small", "big", "new", "old"]
# Which adjectives make sense for which kind of noun.
ADJ_FOR_KIND = {
    "animal": ["small", "big", "old", "black", "white"],
    "obj": SIZES + COLOURS,
    "open": ["small", "big", "old", "red", "blue", "white"],
    "place": ["small", "big", "new", "old"],
}

NUMBERS = [
    ("two", "deux"),
    ("three", "trois"),
    ("four", "quatre"),
    ("five", "cinq"),
    ("six", "six"),
    ("seven", "sept"),
    ("eight", "huit"),
    ("nine", "neuf"),
    ("ten", "dix"),
]

LANGUAGES = [
    ("French", "français"),
    ("English", "anglais"),
    ("Spanish", "espagnol"),
    ("German", "allemand"),
    ("Italian", "italien"),
]

# States expressed with "avoir" in French: I am hungry -> J'ai faim.
AVOIR_STATES = [
    ("hungry", "faim"),
    ("thirsty", "soif"),
    ("cold", "froid"),
    ("hot", "chaud"),
    ("afraid", "peur"),
]

PHRASES = [
    ("Hello!", "Bonjour !"),
    ("Good evening!", "Bonsoir !"),
    ("Good night, Paul.", "Bonne nuit, Paul."),
    ("Goodbye, Marie!", "Au revoir, Marie !"),
    ("See you tomorrow, Paul!", "À demain, Paul !"),
    ("See you soon, Marie!", "À bientôt, Marie !"),
    ("Thank you very much!", "Merci beaucoup !"),
    ("Thank you for the book.", "Merci pour le livre."),
    ("Thank you for the cake.", "Merci pour le gâteau."),
    ("Thank you for the letter.", "Merci pour la lettre."),
    ("You are welcome, Paul.", "De rien, Paul."),
    ("Excuse me, Marie.", "Excusez-moi, Marie."),
    ("How are you, Paul?", "Comment vas-tu, Paul ?"),
    ("I am fine, thank you.", "Je vais bien, merci."),
    ("My name is Paul.", "Je m'appelle Paul."),
    ("Her name is Marie.", "Elle s'appelle Marie."),
    ("Have a good day!", "Bonne journée !"),
    ("Happy birthday, Marie!", "Joyeux anniversaire, Marie !"),
    ("Welcome to Paris!", "Bienvenue à Paris !"),
    ("Please open the window.", "Ouvrez la fenêtre, s'il vous plaît."),
    ("Please close the door.", "Fermez la porte, s'il vous plaît."),
    ("What time is it?", "Quelle heure est-il ?"),
    ("It is three o'clock.", "Il est trois heures."),
    ("It is raining today.", "Il pleut aujourd'hui."),
    ("It is snowing in Paris.", "Il neige à Paris."),
    ("Good luck, Paul!", "Bonne chance, Paul !"),
]

# --------------------------------------------------------------------------
# Morphology helpers
# --------------------------------------------------------------------------

VOWELS = "aeiouyàâéèêëîïôœûh"  # French "h" is mute in every word used here


def starts_with_vowel(word):
    return word[:1].lower() in VOWELS


def elide(word, following):
    """je -> j', ne -> n', le/la -> l', de -> d', que -> qu' before a vowel."""
    if starts_with_vowel(following):
        return word[:-1] + "'" + following
    return word + " " + following


def en_indef(word):
    return ("an " if word[:1] in "aeiou" else "a ") + word


def en_generic(noun):
    """English generic object of "like": the rain, the snow; but winter, music, tea."""
    return "the " + noun.en if noun.en in ("rain", "snow") else noun.en


def fr_def(noun, plural=False):
    if plural:
        return "les " + noun.fr_pl
    return elide("le" if noun.gender == "m" else "la", noun.fr)


def fr_partitive(noun):
    if starts_with_vowel(noun.fr):
        return "de l'" + noun.fr
    return ("du " if noun.gender == "m" else "de la ") + noun.fr


def fr_to(noun):
    """à + definite article, with the contractions au / aux."""
    art = fr_def(noun)
    if art.startswith("le "):
        return "au " + art[3:]
    if art.startswith("les "):
        return "aux " + art[4:]
    return "à " + art


def fr_noun_adj(noun, adj, plural, article):
    """Noun phrase with an adjective: un grand chien, une voiture rouge, de grands chiens."""
    noun_fr = noun.fr_pl if plural else noun.fr
    if adj.pre:
        adj_fr = adj.fr(noun.gender, plural, noun_fr)
        phrase = adj_fr + " " + noun_fr
    else:
        phrase = noun_fr + " " + adj.fr(noun.gender, plural)
    if article == "def":
        if plural:
            return "les " + phrase
        return elide("le" if noun.gender == "m" else "la", phrase)
    if plural:  # indefinite plural: "de" before a preceding adjective
        return ("de " if adj.pre else "des ") + phrase
    return ("un " if noun.gender == "m" else "une ") + phrase


def cap(s):
    return s[:1].upper() + s[1:]


def en_verb(subject, verb, negative=False):
    base, third, _ = VERBS[verb]
    if verb == "be":
        form = {"I": "am"}.get(subject.en, "is" if subject.third_singular else "are")
        return form + (" not" if negative else "")
    if negative:
        return ("does not " if subject.third_singular else "do not ") + base
    return third if subject.third_singular else base


def fr_clause(subject, verb, rest, negative=False):
    """Subject + conjugated verb (+ negation) + rest, with elision."""
    form = VERBS[verb][2][subject.person]
    if negative:
        core = subject.fr + " " + elide("ne", form) + " pas"
    else:
        core = elide(subject.fr, form) if subject.fr == "je" else subject.fr + " " + form
    return core + (" " + rest if rest else "")


def fr_inverted(subject, verb):
    """Inverted question: veux-tu, aime-t-il, mangent-elles."""
    form = VERBS[verb][2][subject.person]
    link = "-t-" if form[-1] in "ae" and subject.fr in ("il", "elle") else "-"
    return form + link + subject.fr


def fr_question(subject, verb, rest):
    """Pronoun subjects invert; noun subjects use "est-ce que"."""
    if subject.fr in ("tu", "vous", "il", "elle", "ils", "elles"):
        return fr_inverted(subject, verb) + (" " + rest if rest else "")
    return "est-ce " + elide("que", fr_clause(subject, verb, rest))


def pair(en, fr, end="."):
    """Capitalise and punctuate; French puts a space before ? and !."""
    fr_end = " " + end if end in "?!" else end
    return cap(en) + end, cap(fr) + fr_end


# --------------------------------------------------------------------------
# Sentence patterns. Each yields (English, French) candidates.
# --------------------------------------------------------------------------

# verb -> noun kinds it takes as a definite object
OBJECT_KINDS = {
    "eat": ["food"],
    "want": ["food", "obj", "read"],
    "see": ["animal", "obj", "place"],
    "look for": ["obj", "animal"],
    "read": ["read"],
    "take": ["take", "ride"],
    "buy": ["food", "obj", "read"],
    "open": ["open"],
}


def objects_for(verb, countable=None):
    seen = []
    for kind in OBJECT_KINDS[verb]:
        for n in nouns(kind, countable):
            if n not in seen:
                seen.append(n)
    return seen


def pat_definite_object():
    """I eat the apple. / Je mange la pomme."""
    for s in SUBJECTS:
        for verb in OBJECT_KINDS:
            for n in objects_for(verb):
                if n.mass and verb not in ("eat", "want", "buy"):
                    continue
                yield pair(f"{s.en} {en_verb(s, verb)} the {n.en}", fr_clause(s, verb, fr_def(n)))


def pat_indefinite_adj_object():
    """She buys a red car. / Elle achète une voiture rouge."""
    for s in SUBJECTS:
        for verb in ("see", "want", "buy", "look for", "have"):
            kinds = ["obj", "animal"] if verb != "buy" else ["obj"]
            for kind in kinds:
                for n in nouns(kind, countable=True):
                    for a in ADJ_FOR_KIND[kind]:
                        yield pair(
                            f"{s.en} {en_verb(s, verb)} {en_indef(ADJ[a].en + ' ' + n.en)}",
                            fr_clause(s, verb, fr_noun_adj(n, ADJ[a], False, "indef")),
                        )


def pat_numbers():
    """She has two dogs. / Elle a deux chiens."""
    for s in SUBJECTS:
        for verb in ("have", "buy", "see", "want"):
            kinds = {
                "have": ["animal", "obj"],
                "buy": ["food", "obj", "read"],
                "see": ["animal"],
                "want": ["food", "obj"],
            }[verb]
            for kind in kinds:
                for n in nouns(kind, countable=True):
                    for num_en, num_fr in NUMBERS:
                        yield pair(
                            f"{s.en} {en_verb(s, verb)} {num_en} {n.en_pl}",
                            fr_clause(s, verb, f"{num_fr} {n.fr_pl}"),
                        )


def pat_predicate_adj():
    """The cat is small. / Le chat est petit.  The cars are red. / Les voitures sont rouges."""
    for kind, adjs in ADJ_FOR_KIND.items():
        for n in nouns(kind, countable=True):
            for plural in (False, True):
                for a in adjs:
                    adj = ADJ[a]
                    subj = Subject(
                        "the " + (n.en_pl if plural else n.en),
                        fr_def(n, plural),
                        "ils" if plural else "il",
                        n.gender,
                    )
                    for neg in (False, True):
                        yield pair(
                            f"{subj.en} {en_verb(subj, 'be', neg)} {adj.en}",
                            fr_clause(subj, "be", adj.fr(n.gender, plural), neg),
                        )


def pat_is_it_adj():
    """Is the car red? / Est-ce que la voiture est rouge ?"""
    for kind, adjs in ADJ_FOR_KIND.items():
        for n in nouns(kind, countable=True):
            for plural in (False, True):
                for a in adjs:
                    adj = ADJ[a]
                    subj = Subject(
                        "the " + (n.en_pl if plural else n.en),
                        fr_def(n, plural),
                        "ils" if plural else "il",
                        n.gender,
                    )
                    be = "are" if plural else "is"
                    yield pair(
                        f"{be} {subj.en} {adj.en}",
                        "est-ce " + elide("que", fr_clause(subj, "be", adj.fr(n.gender, plural))),
                        "?",
                    )


def pat_like_generic(negative):
    """We do not like the rain. / Nous n'aimons pas la pluie.  I like cats. / J'aime les chats."""
    for s in SUBJECTS:
        for n in NOUNS:
            if n.kinds & {"weather"}:
                en_obj, fr_obj = en_generic(n), fr_def(n)
            elif n.kinds & {"animal"}:
                en_obj, fr_obj = n.en_pl, fr_def(n, plural=True)
            elif n.mass and n.kinds & {"drink", "food"}:
                en_obj, fr_obj = n.en, fr_def(n)
            else:
                continue
            yield pair(
                f"{s.en} {en_verb(s, 'like', negative)} {en_obj}", fr_clause(s, "like", fr_obj, negative)
            )


def pat_partitive(negative):
    """I drink water. / Je bois de l'eau.  He does not eat cheese. / Il ne mange pas de fromage."""
    for s in SUBJECTS:
        for verb, kind in (("drink", "drink"), ("eat", "food"), ("want", "drink"), ("buy", "food")):
            for n in nouns(kind, countable=False):
                fr_obj = elide("de", n.fr) if negative else fr_partitive(n)
                yield pair(
                    f"{s.en} {en_verb(s, verb, negative)} {n.en}", fr_clause(s, verb, fr_obj, negative)
                )


def pat_not_have():
    """I do not have a car. / Je n'ai pas de voiture."""
    for s in SUBJECTS:
        for kind in ("animal", "obj"):
            for n in nouns(kind, countable=True):
                yield pair(
                    f"{s.en} {en_verb(s, 'have', True)} {en_indef(n.en)}",
                    fr_clause(s, "have", elide("de", n.fr), True),
                )


def pat_negative_object():
    """He does not read the newspaper. / Il ne lit pas le journal."""
    for s in SUBJECTS:
        for verb in ("read", "open", "see", "take", "look for"):
            for n in objects_for(verb, countable=True):
                yield pair(f"{s.en} {en_verb(s, verb, True)} the {n.en}", fr_clause(s, verb, fr_def(n), True))


def pat_go():
    """We go to the market. / Nous allons au marché."""
    for s in SUBJECTS:
        for n in nouns("place"):
            for neg in (False, True):
                yield pair(f"{s.en} {en_verb(s, 'go', neg)} to the {n.en}", fr_clause(s, "go", fr_to(n), neg))


def pat_speak():
    """She speaks French. / Elle parle français."""
    for s in SUBJECTS:
        for en, fr in LANGUAGES:
            for neg in (False, True):
                yield pair(f"{s.en} {en_verb(s, 'speak', neg)} {en}", fr_clause(s, "speak", fr, neg))


def pat_states():
    """She is tired. / Elle est fatiguée.  We are hungry. / Nous avons faim."""
    for s in SUBJECTS + [Subject("Paul and Marie", "Paul et Marie", "ils")]:
        for a in ("tired", "happy", "sad"):
            for neg in (False, True):
                yield pair(
                    f"{s.en} {en_verb(s, 'be', neg)} {a}",
                    fr_clause(s, "be", ADJ[a].fr(s.gender, s.plural), neg),
                )
        for en, fr in AVOIR_STATES:
            for neg in (False, True):
                yield pair(f"{s.en} {en_verb(s, 'be', neg)} {en}", fr_clause(s, "have", fr, neg))


def pat_where():
    """Where is the station? / Où est la gare ?"""
    for kind in ("place", "obj", "animal", "take", "read"):
        for n in nouns(kind, countable=True):
            yield pair(f"where is the {n.en}", "où est " + fr_def(n), "?")
            yield pair(f"where are the {n.en_pl}", "où sont " + fr_def(n, True), "?")


def pat_yes_no_question():
    """Do you want the cake? / Voulez-vous le gâteau ?  Does she like tea? / Aime-t-elle le thé ?"""
    for s in QUESTION_SUBJECTS:
        aux = "does" if s.third_singular else "do"
        for verb in ("want", "see", "read", "buy", "take", "eat"):
            for n in objects_for(verb, countable=True):
                yield pair(f"{aux} {s.en} {VERBS[verb][0]} the {n.en}", fr_question(s, verb, fr_def(n)), "?")
        for n in NOUNS:
            if n.mass and n.kinds & {"drink", "weather"}:
                yield pair(f"{aux} {s.en} like {en_generic(n)}", fr_question(s, "like", fr_def(n)), "?")
        for en, fr in LANGUAGES:
            yield pair(f"{aux} {s.en} speak {en}", fr_question(s, "speak", fr), "?")


def pat_how_many():
    """How many dogs do you have? / Combien de chiens avez-vous ?"""
    for s in QUESTION_SUBJECTS:
        aux = "does" if s.third_singular else "do"
        for verb, kinds in (("have", ["animal", "obj"]), ("see", ["animal"]), ("buy", ["food", "read"])):
            for kind in kinds:
                for n in nouns(kind, countable=True):
                    obj = elide("de", n.fr_pl)
                    if s.fr in ("vous", "il", "elle", "ils", "elles"):
                        fr = "combien " + obj + " " + fr_inverted(s, verb)
                    else:
                        fr = "combien " + obj + " est-ce " + elide("que", fr_clause(s, verb, ""))
                    yield pair(f"how many {n.en_pl} {aux} {s.en} {VERBS[verb][0]}", fr, "?")


def pat_phrases():
    yield from PHRASES


# (pattern, how many pairs to draw from it)
PATTERNS = [
    (pat_definite_object, 95),
    (pat_indefinite_adj_object, 55),
    (pat_numbers, 45),
    (pat_predicate_adj, 45),
    (pat_is_it_adj, 12),
    (lambda: pat_like_generic(False), 20),
    (lambda: pat_like_generic(True), 20),
    (lambda: pat_partitive(False), 20),
    (lambda: pat_partitive(True), 15),
    (pat_not_have, 15),
    (pat_negative_object, 25),
    (pat_go, 30),
    (pat_speak, 15),
    (pat_states, 30),
    (pat_where, 16),
    (pat_yes_no_question, 35),
    (pat_how_many, 12),
    (pat_phrases, len(PHRASES)),
]

MAX_EN, MAX_FR = 40, 60


def build_corpus(seed=SEED):
    rng = random.Random(seed)
    seen_en = set()
    pairs = []
    for pattern, quota in PATTERNS:
        # keep the first translation of each new English sentence
        candidates = {}
        for en, fr in pattern():
            if len(en) <= MAX_EN and len(fr) <= MAX_FR and en not in seen_en:
                candidates.setdefault(en, fr)
        unique = list(candidates.items())
        # random draw, preferring short English sentences (<= 25 characters)
        rng.shuffle(unique)
        unique.sort(key=lambda p: len(p[0]) > 25)
        for en, fr in unique[:quota]:
            seen_en.add(en)
            pairs.append((en, fr))
    rng.shuffle(pairs)
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    pairs = build_corpus()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8", newline="\n") as f:
        for en, fr in pairs:
            f.write(f"{en}\t{fr}\n")
    print(f"wrote {len(pairs)} pairs to {args.output}")


if __name__ == "__main__":
    main()
