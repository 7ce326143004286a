#!/usr/bin/env python3
"""A commit-msg hook: refuse a commit whose subject (first line) is 72 characters or more.

python tools/check_subject.py .git/COMMIT_EDITMSG     # what pre-commit runs at the commit-msg stage
python tools/check_subject.py --log main~20..main      # the subjects of a range, for a review
"""

from __future__ import annotations

import subprocess
import sys

LIMIT = 72


def main(argv: list[str]) -> int:
    if argv[:1] == ["--log"]:
        rng = argv[1] if len(argv) > 1 else "HEAD~20..HEAD"
        subjects = subprocess.run(["git", "log", "--format=%s", rng], capture_output=True, text=True, check=True)
        lines = subjects.stdout.splitlines()
    else:
        with open(argv[0], encoding="utf-8") as f:
            lines = [next((ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#")), "")]
    long = [s for s in lines if len(s) >= LIMIT]
    for s in long:
        print(f"commit subject is {len(s)} characters (keep it under {LIMIT}): {s[:80]}…")
    return 1 if long else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
