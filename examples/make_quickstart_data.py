"""Generate the quickstart's raw, messy, multi-source support data (deterministic, seeded).

The domain is customer support for *Brightbox*, a fictional self-hosted backup appliance
with a command-line tool ``bbx``. Three sources with different column names hold
instruction -> response pairs, with real defects a curation stage must handle:

* ``examples/quickstart/tickets.jsonl``  - fields ``ticket_id, question, answer, product``
  (malformed JSON lines, a cp1252-encoded line, wrong-typed fields, HTML fragments)
* ``examples/quickstart/faq.csv``        - columns ``faq_id, prompt, completion, category``
  (mojibake, empty and too-short rows)
* ``examples/quickstart/kb.sqlite``      - table ``kb_articles(id, title_question, body, topic)``

Across sources: exact duplicates, near duplicates (small edits), e-mail addresses and
phone numbers in the text.

Run: ``python examples/make_quickstart_data.py`` (rewrites the three files byte-identically).
"""

from __future__ import annotations

import csv
import io
import json
import random
import sqlite3
from pathlib import Path

OUT = Path(__file__).resolve().parent / "quickstart"
SEED = 20261123

MODELS = ["BX-200", "BX-400", "BX-800 Pro"]
OSES = ["Ubuntu 24.04", "Windows 11", "macOS 15", "Debian 12", "Fedora 41"]
TARGETS = ["an S3 bucket", "a USB drive", "a second Brightbox", "a NAS share", "Backblaze B2"]
NAMES = ["Ana", "Ben", "Chloe", "Dmitri", "Esra", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi", "Lena"]

# Each topic: question paraphrases (with {model}/{os}/{target} slots) and the core steps
# of a correct answer. Answers are assembled from an opener, the steps, an optional tip and
# a closing, so two answers on one topic share facts but not most of their wording.
TOPICS: list[dict[str, list[str]]] = [
    {
        "q": [
            "How do I factory reset my {model}?",
            "What's the way to wipe a {model} back to factory settings?",
            "I need to reset my {model} to defaults, how?",
            "Factory reset steps for the {model} please",
        ],
        "a": [
            "Power the {model} on and wait until the status light is solid white.",
            "Press and hold the recessed reset button on the back for 10 seconds until the light blinks amber.",
            "Release the button; the box reboots and restores factory settings in about two minutes.",
            "Your backup data on the internal disks is kept; only settings, users and API tokens are erased.",
        ],
    },
    {
        "q": [
            "How can I schedule a nightly backup on {os}?",
            "Is there a way to run backups every night from {os}?",
            "Set up an automatic daily backup from a {os} laptop?",
            "What's the command to schedule backups on {os}?",
        ],
        "a": [
            "Install the bbx agent on the {os} machine and link it with `bbx login`.",
            "Create the schedule with `bbx schedule add --daily 02:00 --path ~/Documents`.",
            "Run `bbx schedule list` to confirm it; the next run time is shown in the last column.",
            "The agent wakes the machine only if 'Wake for backups' is enabled in the power settings.",
        ],
    },
    {
        "q": [
            "How do I restore a single file from yesterday?",
            "I deleted a file by mistake, can I get yesterday's version back?",
            "Restore one file from an older snapshot?",
            "How to recover a single document from a previous backup",
        ],
        "a": [
            "List the snapshots with `bbx snapshots` and note the id of yesterday's one.",
            "Run `bbx restore <snapshot-id> --path /path/to/file --to ~/Restored` to copy just that file.",
            "Restores never overwrite the original unless you pass `--in-place`.",
            "In the web console the same is under Snapshots, then Browse, then Download.",
        ],
    },
    {
        "q": [
            "Can I replicate my {model} to {target}?",
            "How do I send an offsite copy to {target}?",
            "Setting up replication from the {model} to {target}",
            "Is offsite replication to {target} supported?",
        ],
        "a": [
            "Yes. Open Settings, then Replication, and choose {target} as the destination.",
            "Replication runs after each completed backup and only sends changed blocks.",
            "Data stays encrypted with your vault key, so {target} never sees plaintext.",
            "Check progress with `bbx replication status`; a lag above 24 hours raises an alert.",
        ],
    },
    {
        "q": [
            "The status light on my {model} is blinking red, what does it mean?",
            "Why is my {model} flashing red?",
            "Red blinking light on {model}, is something broken?",
            "My {model} shows a red light and backups stopped",
        ],
        "a": [
            "A blinking red light means a disk failed its health check.",
            "Run `bbx disks` to see which bay reports the fault and its SMART status.",
            "The {model} keeps working in degraded mode; replace the disk in that bay while powered on.",
            "The array rebuilds automatically; the light turns white when the rebuild finishes.",
        ],
    },
    {
        "q": [
            "How do I change the encryption passphrase?",
            "Can I rotate the vault passphrase?",
            "I want to set a new encryption password for my backups",
            "Changing the backup encryption key, how?",
        ],
        "a": [
            "Run `bbx vault rotate` and enter the current passphrase, then the new one twice.",
            "Rotation re-wraps the vault key, so it takes seconds and does not re-encrypt your data.",
            "Store the new recovery kit: without the passphrase or the kit, backups cannot be read.",
            "Agents pick up the change at their next run; no re-linking is needed.",
        ],
    },
    {
        "q": [
            "My backup from {os} fails with error E1042",
            "What does error E1042 mean on {os}?",
            "Backups keep failing on {os} with code E1042",
            "E1042 when backing up a {os} machine, how to fix?",
        ],
        "a": [
            "E1042 means the agent could not read a file because another program holds an exclusive lock.",
            "On {os}, enable snapshot mode with `bbx config set agent.snapshot true` so locked files are read from a snapshot.",
            "Then run `bbx backup now` to retry; the log at `bbx logs --last` lists any files still skipped.",
            "Skipped files are reported but never stop the rest of the backup.",
        ],
    },
    {
        "q": [
            "How much space do my backups use?",
            "Where can I see storage usage on the {model}?",
            "How do I check how full my {model} is?",
            "Show disk usage per machine?",
        ],
        "a": [
            "Run `bbx usage` to see used and free space, and the deduplication ratio.",
            "Add `--by-machine` to break the total down per linked computer.",
            "Usage counts each unique block once, so many similar machines take little extra space.",
            "The {model} sends a warning e-mail when free space drops below 15 percent.",
        ],
    },
    {
        "q": [
            "How do I add another user to the {model}?",
            "Can a colleague get their own login on the {model}?",
            "Creating a new user account on the box",
            "How to give my partner access to the {model}?",
        ],
        "a": [
            "Open the web console, go to Users and click Invite.",
            "Pick a role: Viewer can browse and restore, Operator can also change schedules, Admin can do everything.",
            "The invite link expires after 72 hours; resend it from the same page if needed.",
            "From the terminal the same is `bbx users invite <email> --role viewer`.",
        ],
    },
    {
        "q": [
            "How do I update the firmware on the {model}?",
            "Is there a firmware update for the {model} and how do I install it?",
            "Update {model} software?",
            "Upgrading the {model} firmware safely",
        ],
        "a": [
            "Run `bbx firmware check` to see if a newer version is available.",
            "Install it with `bbx firmware update`; the {model} reboots once and is back in about five minutes.",
            "Running backups are paused and resume automatically after the update.",
            "Enable automatic updates with `bbx config set firmware.auto true` to install them on Sundays at 03:00.",
        ],
    },
    {
        "q": [
            "How do I exclude folders from the backup?",
            "Can I skip node_modules and cache folders?",
            "Excluding some directories from my {os} backup",
            "Stop backing up my Downloads folder?",
        ],
        "a": [
            "Add a pattern with `bbx exclude add '**/node_modules'`; patterns use gitignore syntax.",
            "List the active patterns with `bbx exclude list` and remove one with `bbx exclude rm <n>`.",
            "Excludes apply from the next backup; older snapshots keep the files until they expire.",
            "Caches and temporary folders on {os} are excluded by default.",
        ],
    },
    {
        "q": [
            "How long are snapshots kept?",
            "What is the retention policy and can I change it?",
            "Can I keep backups for a year?",
            "Change how many old snapshots the {model} keeps",
        ],
        "a": [
            "By default the {model} keeps hourly snapshots for 2 days, daily for 30 days and monthly for 12 months.",
            "Change it with `bbx retention set --daily 60 --monthly 24`.",
            "Pruning runs every night at 04:00 and frees space only for blocks no snapshot still uses.",
            "Snapshots you pin with `bbx snapshots pin <id>` are never pruned.",
        ],
    },
    {
        "q": [
            "Backups from {os} are very slow, how can I speed them up?",
            "Why is my first backup taking forever?",
            "Upload speed to the {model} is slow",
            "How to make backups faster on {os}?",
        ],
        "a": [
            "The first backup copies everything; later ones only send changed blocks and are much faster.",
            "Check the link with `bbx doctor --network`; a wired connection is usually 5 to 10 times faster than Wi-Fi.",
            "Raise parallel uploads with `bbx config set agent.threads 4` on machines with spare CPU.",
            "Throttling may be on: `bbx config get agent.bandwidth_limit` shows the current limit.",
        ],
    },
    {
        "q": [
            "How do I connect to the {model} web console?",
            "What is the address of the admin page?",
            "I can't find the {model} on my network",
            "Open the Brightbox dashboard in a browser?",
        ],
        "a": [
            "Browse to http://brightbox.local from a computer on the same network.",
            "If that name does not resolve, run `bbx discover` to print the box's IP address.",
            "The first login uses the setup code printed on the sticker under the {model}.",
            "For access from outside your network, enable Remote Access instead of forwarding ports.",
        ],
    },
    {
        "q": [
            "Can I back up a Postgres database?",
            "How do I include a database in my backups?",
            "Consistent backups of a running database on {os}?",
            "Database backup with the bbx agent",
        ],
        "a": [
            "Use a pre-backup hook so the database writes a consistent dump before files are read.",
            "For Postgres: `bbx hooks add pre 'pg_dump -Fc mydb -f /var/backups/mydb.dump'`.",
            "Include /var/backups in the backup paths; the dump is deduplicated like any other file.",
            "If the hook exits with an error, the backup is marked failed so you notice.",
        ],
    },
    {
        "q": [
            "How do I cancel my Brightbox Cloud subscription?",
            "I want to stop paying for cloud storage",
            "Cancel the cloud plan?",
            "How can I end my subscription?",
        ],
        "a": [
            "Go to account.brightbox.example, open Billing and choose Cancel plan.",
            "Your cloud copy stays readable for 30 days so you can download or move it.",
            "Local backups on the {model} are not affected by cancelling.",
            "Refunds for unused months follow the terms on the Billing page.",
        ],
    },
]

OPENERS = [
    "Sure, here is how.",
    "Good question.",
    "Happy to help with that.",
    "Here are the steps.",
    "Thanks for reaching out.",
    "That is quick to do.",
    "",
]
TIPS = [
    "Tip: `bbx help <command>` shows every option with examples.",
    "If anything looks off, `bbx doctor` checks the setup and suggests fixes.",
    "You can do all of this from the web console too.",
    "The activity log in the web console records each of these changes.",
    "",
    "",
]
CLOSINGS = [
    "Let us know if this does not solve it.",
    "Reply here if you get stuck on any step.",
    "Hope that helps!",
    "",
]
CUSTOMER_PII = [
    "My email is {name}.{surname}@example.com if you need it.",
    "You can reach me at {name}{n}@mailbox.example.org or on +44 20 7946 {n4}.",
    "Call me back on (555) 013-{n4} please.",
    "Contact: {name}@example.net, phone +1 202 555 {n4}.",
]
SURNAMES = ["silva", "kowalski", "nguyen", "okafor", "schmidt", "tanaka", "haddad", "moreau"]


def make_pair(rng: random.Random, topic: dict[str, list[str]]) -> tuple[str, str]:
    """One question and a useful, varied answer for a topic."""
    slots = {"model": rng.choice(MODELS), "os": rng.choice(OSES), "target": rng.choice(TARGETS)}
    question = rng.choice(topic["q"]).format(**slots)
    if rng.random() < 0.3:
        question = (
            rng.choice(["Hi, ", "Hello! ", "Quick question: ", "Hey team, "]) + question[0].lower() + question[1:]
        )
    steps = [s.format(**slots) for s in topic["a"]]
    if rng.random() < 0.35:
        steps = steps[:3]  # shorter answers also occur
    opener, tip, closing = rng.choice(OPENERS), rng.choice(TIPS), rng.choice(CLOSINGS)
    if rng.random() < 0.5:
        body = " ".join(steps)
    else:
        body = "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))
    answer = "\n\n".join(p for p in (opener, body, tip, closing) if p)
    return question, answer


def add_pii(rng: random.Random, text: str) -> str:
    pii = rng.choice(CUSTOMER_PII).format(
        name=rng.choice(NAMES).lower(),
        surname=rng.choice(SURNAMES),
        n=rng.randint(1, 99),
        n4=f"{rng.randint(0, 9999):04d}",
    )
    return f"{text} {pii}"


def near_edit(rng: random.Random, text: str) -> str:
    """A small edit: a typo, a dropped word, or changed punctuation."""
    words = text.split(" ")
    kind = rng.choice(["typo", "drop", "punct"])
    i = rng.randrange(len(words))
    if kind == "typo" and len(words[i]) > 3:
        w = words[i]
        j = rng.randrange(1, len(w) - 1)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif kind == "drop" and len(words) > 10:
        del words[i]
    else:
        return text.replace(". ", "! ", 1) if ". " in text else text + "!"
    return " ".join(words)


def htmlify(text: str) -> str:
    paras = [p.replace("`", "") for p in text.split("\n\n")]
    return "".join(f"<p>{p.replace('&', '&amp;').replace(chr(10), '<br/>')}</p>" for p in paras).replace(
        "bbx", "<code>bbx</code>", 1
    )


def mojibake(text: str) -> str:
    """UTF-8 bytes read as cp1252: the classic 'â€™' damage."""
    return text.encode("utf-8").decode("cp1252", errors="replace")


def generate() -> dict[str, list[dict[str, object]]]:
    rng = random.Random(SEED)
    pairs = []
    for i in range(900):
        topic = TOPICS[i % len(TOPICS)]
        q, a = make_pair(rng, topic)
        if rng.random() < 0.12:
            q = add_pii(rng, q)
        pairs.append((q, a))
    rng.shuffle(pairs)
    jsonl, csv_rows, sql_rows = pairs[:420], pairs[420:700], pairs[700:]
    out: dict[str, list[dict[str, object]]] = {"jsonl": [], "csv": [], "sql": []}
    for i, (q, a) in enumerate(jsonl):
        if rng.random() < 0.05:
            a = htmlify(a)
        out["jsonl"].append({"ticket_id": f"T-{10000 + i}", "question": q, "answer": a, "product": rng.choice(MODELS)})
    for i, (q, a) in enumerate(csv_rows):
        if rng.random() < 0.04:
            a = a.replace("'", "\u2019") + " \u2014 the Brightbox team"
            a = mojibake(a)
        out["csv"].append({"faq_id": i + 1, "prompt": q, "completion": a, "category": "faq"})
    for i, (q, a) in enumerate(sql_rows):
        out["sql"].append({"id": i + 1, "title_question": q, "body": a, "topic": "kb"})
    # Exact duplicates: same pair again, within and across sources.
    for _ in range(45):
        src = rng.choice(["jsonl", "csv", "sql"])
        q, a = rng.choice(pairs)
        _append(out, src, q, a, rng)
    # Near duplicates: a copy with a small edit in the answer.
    for _ in range(60):
        src = rng.choice(["jsonl", "csv", "sql"])
        q, a = rng.choice(pairs)
        _append(out, src, q, near_edit(rng, a), rng)
    # Empty and too-short records.
    for q, a in [("", ""), ("ok", "thanks"), ("hi", ""), ("?", "no"), ("help", "see docs")]:
        _append(out, rng.choice(["jsonl", "csv", "sql"]), q, a, rng)
    return out


def _append(out: dict[str, list[dict[str, object]]], src: str, q: str, a: str, rng: random.Random) -> None:
    rows = out[src]
    n = len(rows)
    if src == "jsonl":
        rows.append({"ticket_id": f"T-{10000 + n}", "question": q, "answer": a, "product": rng.choice(MODELS)})
    elif src == "csv":
        rows.append({"faq_id": n + 1, "prompt": q, "completion": a, "category": "faq"})
    else:
        rows.append({"id": n + 1, "title_question": q, "body": a, "topic": "kb"})


def write_jsonl(rows: list[dict[str, object]], rng: random.Random) -> bytes:
    """JSONL with real defects spliced in: bad JSON, a cp1252 line, wrong-typed fields."""
    buf = io.BytesIO()
    bad_at = set(rng.sample(range(len(rows)), 12))
    for i, row in enumerate(rows):
        line = json.dumps(row, ensure_ascii=False)
        buf.write(line.encode("utf-8") + b"\n")
        if i in bad_at:
            kind = len(bad_at) % 4
            bad_at.discard(i)
            if kind == 0:
                buf.write(line[: len(line) // 2].encode("utf-8") + b"\n")  # truncated line
            elif kind == 1:
                buf.write(b'{"ticket_id": "T-X' + str(i).encode() + b'", "question": "Does it work?", "answer": }\n')
            elif kind == 2:
                wrong = {"ticket_id": f"T-W{i}", "question": ["not", "a", "string"], "answer": 42, "product": None}
                buf.write(json.dumps(wrong).encode("utf-8") + b"\n")
            else:
                buf.write(b"\n")  # blank line: skipped, not a record
    # A support agent's note saved from a Windows tool in cp1252 (not valid UTF-8).
    note = {
        "ticket_id": "T-CP1252",
        "question": "Can I use the BX-400 at 35\u00b0C in a caf\u00e9 back room?",
        "answer": "Yes: the BX-400 is rated for 5\u201340\u00b0C ambient; keep 10 cm of space behind the fan grille "
        "and it will throttle the disks before overheating \u2013 check `bbx sensors` for temperatures.",
        "product": "BX-400",
    }
    buf.write(json.dumps(note, ensure_ascii=False).encode("cp1252") + b"\n")
    return buf.getvalue()


def main() -> None:
    data = generate()
    rng = random.Random(SEED + 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tickets.jsonl").write_bytes(write_jsonl(data["jsonl"], rng))
    with open(OUT / "faq.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["faq_id", "prompt", "completion", "category"], lineterminator="\n")
        w.writeheader()
        w.writerows(data["csv"])
    db = OUT / "kb.sqlite"
    db.unlink(missing_ok=True)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE kb_articles (id INTEGER PRIMARY KEY, title_question TEXT, body TEXT, topic TEXT)")
    con.executemany("INSERT INTO kb_articles VALUES (:id, :title_question, :body, :topic)", data["sql"])
    # A wrong-typed row: SQLite's dynamic typing lets a blob in.
    con.execute("INSERT INTO kb_articles VALUES (?, ?, ?, ?)", (len(data["sql"]) + 1, b"\x00\x01binary", 3.5, "kb"))
    con.commit()
    con.execute("VACUUM")
    con.close()
    for f in sorted(OUT.iterdir()):
        if f.suffix in (".jsonl", ".csv", ".sqlite"):
            print(f"{f.relative_to(OUT.parent.parent)}: {f.stat().st_size} bytes")
    print({k: len(v) for k, v in data.items()})


if __name__ == "__main__":
    main()
