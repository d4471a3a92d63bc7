"""Small multilingual text written for the tests (nothing downloaded): sentences in English, German, French
and Spanish, each made unique by a counter, so a file's language counts are known exactly."""

import json
from pathlib import Path

SENTENCES = {
    "en": ["The weather is nice today and we are going to the park to play football with our friends.",
           "This library provides functions for reading and writing files in many different formats.",
           "The committee will meet next week to discuss the budget for the coming year.",
           "She opened the window and looked at the mountains covered with fresh snow."],
    "de": ["Das Wetter ist heute schön und wir gehen mit unseren Freunden in den Park, um Fußball zu spielen.",
           "Diese Bibliothek stellt Funktionen zum Lesen und Schreiben von Dateien in vielen Formaten bereit.",
           "Der Ausschuss wird sich nächste Woche treffen, um den Haushalt für das kommende Jahr zu besprechen.",
           "Sie öffnete das Fenster und blickte auf die mit frischem Schnee bedeckten Berge."],
    "fr": ["Il fait beau aujourd'hui et nous allons au parc pour jouer au football avec nos amis.",
           "Cette bibliothèque fournit des fonctions pour lire et écrire des fichiers dans de nombreux formats.",
           "Le comité se réunira la semaine prochaine pour discuter du budget de l'année à venir.",
           "Elle ouvrit la fenêtre et regarda les montagnes couvertes de neige fraîche."],
    "es": ["Hoy hace buen tiempo y vamos al parque a jugar al fútbol con nuestros amigos.",
           "Esta biblioteca ofrece funciones para leer y escribir archivos en muchos formatos diferentes.",
           "El comité se reunirá la próxima semana para discutir el presupuesto del año que viene.",
           "Ella abrió la ventana y miró las montañas cubiertas de nieve fresca."],
}


def documents(counts: dict[str, int]) -> list[tuple[str, str]]:
    """(language, text) pairs: counts[lang] documents of each language, interleaved."""
    out = []
    for i in range(max(counts.values())):
        for lang, n in counts.items():
            if i < n:
                sentences = SENTENCES[lang]
                out.append((lang, f"{sentences[i % len(sentences)]} {sentences[(i + 1) % len(sentences)]} ({i})"))
    return out


def write_jsonl(path: Path, counts: dict[str, int]) -> Path:
    path.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for _, text in documents(counts)))
    return path
