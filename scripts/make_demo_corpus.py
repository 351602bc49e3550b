#!/usr/bin/env python3
"""Assembles the demo's bilingual corpus from Debian text packages as JSON lines {"text": ...}:
the King James Bible (bible-kjv, one document per chapter), the English fortunes (fortunes,
one document per fortune) and the Chinese fortunes (fortunes-zh: Debian's code of conduct,
Tang and Song poems, sayings). Usage: make_demo_corpus.py OUTPUT.jsonl"""
import json
import os
import re
import subprocess
import sys

FORTUNES = "/usr/share/games/fortunes"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def bible():
    text = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True,
                          text=True).stdout
    chapters, current, key = [], [], None
    for line in text.splitlines():
        m = re.match(r"^(\w+?)(\d+):(\d+) (.*)$", line)
        if not m:
            continue
        book, chapter, _, verse = m.groups()
        if (book, chapter) != key and current:
            chapters.append(" ".join(current))
            current = []
        key = (book, chapter)
        current.append(verse)
    if current:
        chapters.append(" ".join(current))
    return chapters


def fortunes(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        entries = f.read().split("\n%\n")
    return [ANSI.sub("", e).strip() for e in entries if e.strip()]


def main():
    out = sys.argv[1]
    docs = {"bible": bible(), "english": [], "chinese": []}
    for name in sorted(os.listdir(FORTUNES)):
        path = os.path.join(FORTUNES, name)
        if not os.path.isfile(path) or name.endswith((".dat", ".u8")) or name.startswith("."):
            continue
        kind = "chinese" if name in ("chinese", "tang300", "song100") else "english"
        if kind == "english" and name in ("art", "ascii-art"):
            continue  # pictures, not text
        docs[kind] += fortunes(path)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for kind in ("bible", "english", "chinese"):
            for d in docs[kind]:
                f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    print("corpus: %d Bible chapters, %d English and %d Chinese fortunes -> %s (%.1f MB)" %
          (len(docs["bible"]), len(docs["english"]), len(docs["chinese"]), out,
           os.path.getsize(out) / 1e6))


if __name__ == "__main__":
    main()
