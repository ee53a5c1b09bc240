"""The independent side of bannin's differential Sigma test: which events each rule matches
according to pySigma's SQLite backend (pysigma-backend-sqlite), on real SQLite.

Usage: python3 pysigma_matches.py RULES_DIR EVENTS_JSON
EVENTS_JSON maps a Sigma log source category to its events: {"process_creation": [{"case": 0,
"fields": {"Image": "/usr/bin/ncat", ...}}, ...], ...}. Prints one JSON object mapping each rule id to
the sorted case numbers it matched. A rule pySigma cannot convert is an error, not an empty match.
Each category's events are one table whose columns are COLLATE NOCASE, as Zircolite (the SQLite
backend's own consumer) builds them; a field an event lacks is NULL.
"""

import json
import pathlib
import re
import sqlite3
import sys

from sigma.backends.sqlite import sqliteBackend
from sigma.rule import SigmaRule


def regexp(pattern, value):
    if value is None:
        return False
    return re.search(pattern, str(value)) is not None


def main():
    rules_dir, events_path = sys.argv[1], sys.argv[2]
    events = json.loads(pathlib.Path(events_path).read_text(encoding="utf-8"))
    matches = {}
    for path in sorted(pathlib.Path(rules_dir).rglob("*.yml")):
        rule = SigmaRule.from_yaml(path.read_text(encoding="utf-8"))
        category = rule.logsource.category
        rows = events.get(category, [])
        backend = sqliteBackend()
        columns = sorted(
            {name for row in rows for name in row["fields"]}
            | set(backend.required_fields(rule))
            | {"case_number"}
        )
        conn = sqlite3.connect(":memory:")
        conn.create_function("REGEXP", 2, regexp, deterministic=True)
        conn.execute(
            "CREATE TABLE logs ("
            + ", ".join(f'"{c}" COLLATE NOCASE' for c in columns)
            + ")"
        )
        for row in rows:
            values = dict(row["fields"], case_number=row["case"])
            names = list(values)
            conn.execute(
                "INSERT INTO logs ("
                + ", ".join(f'"{n}"' for n in names)
                + ") VALUES ("
                + ", ".join("?" for _ in names)
                + ")",
                [values[n] for n in names],
            )
        queries = backend.convert_rule(rule)
        hit = set()
        for query in queries:
            for (case,) in conn.execute(
                query.replace("SELECT *", "SELECT case_number", 1)
            ):
                hit.add(case)
        matches[str(rule.id)] = sorted(hit)
    print(json.dumps(matches, sort_keys=True))


if __name__ == "__main__":
    main()
