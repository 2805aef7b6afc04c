"""Check one writer's draft stories: python data/drafts/check.py data/drafts/writer-w1.jsonl

Checks what the corpus checks will check at merge time: valid JSON records with the assigned
emotion, person and topic, 50-120 words, none of the emotion's banned words (whole word,
case-insensitive), no two stories opening with the same three words, and no near-duplicates
within the batch or against the existing stories. Prints one line per problem; exit 1 if any.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from emolib.data import contains_phrase, load_emotions, load_stories, near_duplicates, word_count

HERE = Path(__file__).resolve().parent


def main(path: str) -> int:
    path = Path(path)
    writer = path.stem.split("-")[-1]  # writer-w3 -> w3
    assign = {r["emotion"]: r for r in csv.DictReader((HERE / f"assign-{writer}.tsv").open(), delimiter="\t")}
    emotions = load_emotions()
    problems, seen, openings, texts = [], set(), {}, []
    for ln, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError as exc:
            problems.append(f"{path.name}:{ln}: not JSON ({exc})")
            continue
        e = r.get("emotion")
        if e not in assign:
            problems.append(f"{path.name}:{ln}: emotion {e!r} is not in {writer}'s assignment")
            continue
        if e in seen:
            problems.append(f"{path.name}:{ln}: second story for {e!r}")
        seen.add(e)
        want = assign[e]
        for k in ("person", "topic"):
            if r.get(k) != want[k]:
                problems.append(f"{path.name}:{ln}: {e}: {k} is {r.get(k)!r}, assigned {want[k]!r}")
        if r.get("writer") != writer:
            problems.append(f"{path.name}:{ln}: writer is {r.get('writer')!r}, expected {writer!r}")
        text = r.get("text", "")
        n = word_count(text)
        if not 50 <= n <= 120:
            problems.append(f"{path.name}:{ln}: {e}: {n} words (50-120)")
        if "\n" in text:
            problems.append(f"{path.name}:{ln}: {e}: line break in text")
        for b in [e, *emotions[e].banned]:
            if contains_phrase(text, b):
                problems.append(f"{path.name}:{ln}: {e}: banned word {b!r}")
        first3 = " ".join(text.lower().split()[:3])
        if first3 in openings:
            problems.append(f"{path.name}:{ln}: {e}: opens like line {openings[first3]} ({first3!r})")
        openings.setdefault(first3, ln)
        texts.append((f"{writer}:{e}", text))
    existing = [(s.id, s.text) for s in load_stories()]
    for a, b, sim in near_duplicates(texts + existing):
        if a.startswith(f"{writer}:") or b.startswith(f"{writer}:"):
            problems.append(f"near-duplicate: {a} ~ {b} ({sim:.2f})")
    missing = sorted(set(assign) - seen)
    print("\n".join(problems))
    print(f"{path.name}: {len(seen)} of {len(assign)} emotions written, {len(missing)} to go, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
