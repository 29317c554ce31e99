#!/usr/bin/env python3
"""Writes search request paths for the load generator: N queries of 1-3 words drawn from the
demo catalog's own vocabulary (category, product-kind, adjective, material and brand words read
from crates/catalog/src/seed.rs), about half of the words of four letters or more with one typo
(a letter replaced, dropped or swapped with the next), each with a different price bound so the
answer cache never helps. Most typos are new to the server, so this measures searches whose
words it has not seen since the index last changed, next to the ones it has.

    python3 bench/search_queries.py N [seed] > paths.txt
"""
import random
import re
import sys
from pathlib import Path

n = int(sys.argv[1])
rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 7)
source = (Path(__file__).resolve().parent.parent / "crates/catalog/src/seed.rs").read_text()
vocabulary_part = source[source.index("const TREE"):source.index("const COLOURS")]
words = sorted({w.lower() for literal in re.findall(r'"([^"]+)"', vocabulary_part)
                for w in re.findall(r"[A-Za-z]+", literal) if len(w) >= 3})
letters = "abcdefghijklmnopqrstuvwxyz"


def typo(word):
    i = rng.randrange(len(word))
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + rng.choice(letters) + word[i + 1:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    i = min(i, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


for k in range(n):
    query = []
    for _ in range(rng.choice([1, 2, 2, 3])):
        word = rng.choice(words)
        if len(word) >= 4 and rng.random() < 0.5:
            word = typo(word)
        query.append(word)
    print(f"/api/v1/search?q={'+'.join(query)}&price_max={400000 + k}")
