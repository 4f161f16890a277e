"""Generate small example inputs for every curate reader (deterministic, seeded).

Writes under ``examples/curate/``:

* ``docs/`` - Python reference topics (real text from ``pydoc_data.topics``) as .txt, .md and
  .html files, plus an exact copy, a near copy, an invalid-UTF-8 file and an unsupported file;
* ``reviews.jsonl.gz`` and ``reviews_extra.jsonl.zst`` - short product reviews for labelling;
* ``reviews.tsv`` - more reviews with different column names;
* ``products.parquet`` - a product table with descriptions;
* ``access.log`` - Combined and Common Log Format lines plus garbage lines;
* ``users.csv`` - user attributes joined onto the access-log events.

Run: ``python examples/make_curate_examples.py``.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "curate"
SEED = 7

POSITIVE = [
    "I love how quiet the {m} is, backups just happen every night.",
    "Great box: setup took ten minutes and restores are fast.",
    "Excellent support, they answered within an hour and fixed my schedule.",
    "The {m} has been rock solid for a year, highly recommend it.",
    "Restoring a deleted folder was painless, really happy with it.",
]
NEGATIVE = [
    "The {m} arrived broken and the fan rattles, I want a refund.",
    "Terrible experience: backups failed for a week without any alert.",
    "Support never answered my ticket, very disappointed with the {m}.",
    "The web console is slow and keeps logging me out, awful.",
    "After the update the {m} stopped replicating and nobody can explain why.",
]
NEUTRAL = [
    "The {m} comes with two disk bays and one network port.",
    "I use the {m} for two laptops and a desktop at home.",
    "Bought the {m} last spring for our small office.",
]
MODELS = ["BX-200", "BX-400", "BX-800 Pro"]
COUNTRIES = ["DE", "FR", "US", "JP", "BR"]
PLANS = ["free", "plus", "business"]
PATHS = ["/", "/login", "/api/backups", "/api/snapshots?limit=20", "/settings", "/static/app.js", "/docs/restore"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0", "bbx-agent/3.2 (Windows 11)", "curl/8.5.0"]


def review(rng: random.Random) -> tuple[str, int]:
    pool = rng.choice([POSITIVE, NEGATIVE, NEUTRAL])
    text = rng.choice(pool).format(m=rng.choice(MODELS))
    extra = rng.choice(["", " Would buy again.", " Shipping was quick.", " The box itself looks nice.", ""])
    # Stars mostly agree with the text, with some noise, as real ratings do.
    stars = {
        id(POSITIVE): rng.choice([4, 5, 5, 3]),
        id(NEGATIVE): rng.choice([1, 1, 2, 3]),
        id(NEUTRAL): rng.choice([3, 4, 2]),
    }
    return text + extra, stars[id(pool)]


def write_docs(rng: random.Random) -> None:
    import pydoc_data.topics as topics

    docs = OUT / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    names = sorted(topics.topics)[:36]
    for i, name in enumerate(names):
        body = topics.topics[name]
        if i % 3 == 0:
            (docs / f"{name}.txt").write_text(body, encoding="utf-8")
        elif i % 3 == 1:
            (docs / f"{name}.md").write_text(f"# {name}\n\n{body}", encoding="utf-8")
        else:
            paras = "".join(f"<p>{p.replace('&', '&amp;').replace('<', '&lt;')}</p>" for p in body.split("\n\n"))
            page = f"<html><head><title>{name}</title><style>p{{margin:0}}</style></head><body><h1>{name}</h1>{paras}</body></html>"
            (docs / f"{name}.html").write_text(page, encoding="utf-8")
    first = topics.topics[names[0]]
    (docs / "copy-of-first.txt").write_text(first, encoding="utf-8")  # exact duplicate
    words = topics.topics[names[3]].split(" ")
    words[len(words) // 2] = "EDITED"
    (docs / "near-copy.txt").write_text(" ".join(words), encoding="utf-8")  # near duplicate
    (docs / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me br\xfbl\xe9e, a Latin-1 file.\n".encode("latin-1"))
    (docs / "manual.pdf").write_bytes(b"%PDF-1.4 not a text file")


def main() -> None:
    rng = random.Random(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    write_docs(rng)
    rows = []
    for i in range(120):
        text, stars = review(rng)
        rows.append({"review_id": f"R{i:04d}", "body": text, "stars": stars, "model": rng.choice(MODELS)})
    rows.append({"review_id": "R-dup", **{k: v for k, v in rows[5].items() if k != "review_id"}})
    with gzip.GzipFile(OUT / "reviews.jsonl.gz", "wb", mtime=0) as fh:
        for r in rows:
            fh.write((json.dumps(r) + "\n").encode("utf-8"))
        fh.write(b'{"review_id": "R-bad", "body": "truncated\n')
    import zstandard

    extra = []
    for i in range(40):
        text, stars = review(rng)
        extra.append(json.dumps({"review_id": f"Z{i:04d}", "body": text, "stars": stars}))
    (OUT / "reviews_extra.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor(level=3).compress(("\n".join(extra) + "\n").encode())
    )
    with open(OUT / "reviews.tsv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["rid", "comment", "rating"])
        for i in range(40):
            text, stars = review(rng)
            w.writerow([f"T{i:04d}", text, stars])
        fh.write("T-bad\tonly two columns\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    products = {
        "sku": [f"SKU-{i}" for i in range(6)],
        "name": ["BX-200", "BX-400", "BX-800 Pro", "Cloud Plus", "Cloud Business", "USB Seed Drive"],
        "description": [
            "A two-bay backup appliance for homes, with nightly snapshots and one-click restores.",
            "A four-bay backup appliance for small offices that replicates offsite to the cloud.",
            "An eight-bay appliance with hot-swappable disks, dual network ports and remote management.",
            "Cloud storage for an offsite copy of one appliance, encrypted with your own vault key.",
            "Cloud storage for several appliances with audit logs, roles and a 99.9 percent uptime target.",
            "A rugged drive that seeds the first offsite copy by post instead of over a slow line.",
        ],
        "price_eur": [199.0, 449.0, 999.0, 4.0, 19.0, 59.0],
    }
    pq.write_table(pa.table(products), OUT / "products.parquet")
    users = [{"user": f"u{i:03d}", "country": rng.choice(COUNTRIES), "plan": rng.choice(PLANS)} for i in range(30)]
    with open(OUT / "users.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["user", "country", "plan"], lineterminator="\n")
        w.writeheader()
        w.writerows(users)
    lines = []
    for i in range(300):
        ip = f"198.51.100.{rng.randint(1, 254)}"
        user = rng.choice(users)["user"] if rng.random() < 0.8 else "-"
        ts = f"{(i % 28) + 1:02d}/Oct/2026:{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} +0000"
        req = f"{rng.choice(['GET', 'GET', 'POST'])} {rng.choice(PATHS)} HTTP/1.1"
        status = rng.choice([200, 200, 200, 304, 404, 500])
        size = rng.randint(100, 90000) if status != 304 else "-"
        line = f'{ip} - {user} [{ts}] "{req}" {status} {size}'
        if i % 3:
            line += f' "https://brightbox.example/" "{rng.choice(AGENTS)}"'
        lines.append(line)
    lines.insert(50, "this is not a log line")
    lines.insert(120, '198.51.100.9 - - [99/Foo/2026:99:99:99 +0000] "GET / HTTP/1.1" 200 12')
    (OUT / "access.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            print(f"{f.relative_to(OUT.parent.parent)}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
