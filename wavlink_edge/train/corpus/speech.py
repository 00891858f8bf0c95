"""Speech from espeak-ng (six languages, male/female, whisper/shout/fast/slow) and festival (English).

Sentences are built from small per-language word lists so the spoken content varies without any
text corpus; captions describe who speaks which language and how, never the words themselves.
"""
from __future__ import annotations

import shutil

import numpy as np

from .audio import run_to_wav, trim_silence

LANGUAGES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese"}
GENDERS = ("male", "female")
STYLES = ("normal", "whispering", "shouting", "fast", "slow")
N_SENTENCES = 6  # distinct sentences per (language, gender, style); rendered once, reused by many clips

# (subjects, verbs, objects, places) — enough for varied, grammatical-looking short sentences.
WORDS = {
    "en": (["the old man", "my sister", "the teacher", "our neighbour", "a small child", "the driver"],
           ["is looking for", "has found", "wants to buy", "forgot", "is painting", "will bring"],
           ["a red umbrella", "the morning paper", "two fresh apples", "an old guitar", "the blue car", "a warm coat"],
           ["in the kitchen", "near the station", "after lunch", "at the market", "before the rain", "on Sunday"]),
    "fr": (["le vieil homme", "ma soeur", "le professeur", "notre voisin", "un petit enfant", "le chauffeur"],
           ["cherche", "a trouvé", "veut acheter", "a oublié", "peint", "apportera"],
           ["un parapluie rouge", "le journal du matin", "deux pommes fraîches", "une vieille guitare", "la voiture bleue", "un manteau chaud"],
           ["dans la cuisine", "près de la gare", "après le déjeuner", "au marché", "avant la pluie", "dimanche"]),
    "de": (["der alte Mann", "meine Schwester", "der Lehrer", "unser Nachbar", "ein kleines Kind", "der Fahrer"],
           ["sucht", "hat gefunden", "möchte kaufen", "hat vergessen", "malt", "bringt"],
           ["einen roten Schirm", "die Morgenzeitung", "zwei frische Äpfel", "eine alte Gitarre", "das blaue Auto", "einen warmen Mantel"],
           ["in der Küche", "am Bahnhof", "nach dem Mittagessen", "auf dem Markt", "vor dem Regen", "am Sonntag"]),
    "es": (["el anciano", "mi hermana", "el profesor", "nuestro vecino", "un niño pequeño", "el conductor"],
           ["busca", "ha encontrado", "quiere comprar", "olvidó", "está pintando", "traerá"],
           ["un paraguas rojo", "el periódico de la mañana", "dos manzanas frescas", "una guitarra vieja", "el coche azul", "un abrigo caliente"],
           ["en la cocina", "cerca de la estación", "después del almuerzo", "en el mercado", "antes de la lluvia", "el domingo"]),
    "it": (["il vecchio", "mia sorella", "il maestro", "il nostro vicino", "un bambino piccolo", "l'autista"],
           ["cerca", "ha trovato", "vuole comprare", "ha dimenticato", "sta dipingendo", "porterà"],
           ["un ombrello rosso", "il giornale del mattino", "due mele fresche", "una vecchia chitarra", "la macchina blu", "un cappotto caldo"],
           ["in cucina", "vicino alla stazione", "dopo pranzo", "al mercato", "prima della pioggia", "domenica"]),
    "pt": (["o velho", "a minha irmã", "o professor", "o nosso vizinho", "uma criança pequena", "o motorista"],
           ["procura", "encontrou", "quer comprar", "esqueceu", "está pintando", "vai trazer"],
           ["um guarda-chuva vermelho", "o jornal da manhã", "duas maçãs frescas", "uma guitarra velha", "o carro azul", "um casaco quente"],
           ["na cozinha", "perto da estação", "depois do almoço", "no mercado", "antes da chuva", "no domingo"]),
}

_ESPEAK_STYLE = {  # extra espeak-ng arguments and voice variant per style
    "normal": ([], None), "fast": (["-s", "230"], None), "slow": (["-s", "105"], None),
    "whispering": ([], "whisper"), "shouting": (["-a", "200", "-p", "85", "-s", "185"], None),
}
_FEMALE = ("f1", "f2", "f3", "f4", "f5")
_MALE = ("m1", "m2", "m3", "m4", "m7")


def sentence(lang: str, idx: int) -> str:
    rng = np.random.default_rng([7, list(LANGUAGES).index(lang), idx])
    subj, verb, obj, place = (parts[int(rng.integers(len(parts)))] for parts in WORDS[lang])
    return f"{subj[0].upper()}{subj[1:]} {verb} {obj} {place}."


def available_engines() -> dict:
    return {"espeak-ng": shutil.which("espeak-ng") is not None, "festival": shutil.which("text2wave") is not None}


def render(engine: str, lang: str, gender: str, style: str, idx: int) -> np.ndarray:
    """Render one utterance; the voice variant is derived from idx so a speaker pool has several timbres."""
    text = sentence(lang, idx)
    if engine == "festival":
        # kal_diphone is festival's only installed voice: American English, male
        return trim_silence(run_to_wav(["text2wave", "-o", "{out}"], stdin=text))
    args, variant = _ESPEAK_STYLE[style]
    variant = variant or (_FEMALE if gender == "female" else _MALE)[idx % 5]
    if style == "whispering" and gender == "female":
        variant = "whisperf"
    return trim_silence(run_to_wav(["espeak-ng", "-v", f"{lang}+{variant}", *args, "-w", "{out}", text]))
