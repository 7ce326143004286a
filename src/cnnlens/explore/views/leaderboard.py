"""The leaderboard's view: its table once run, else its job's state (a JSON POST starts it)."""

from __future__ import annotations

from . import Context


def leaderboard(ex, p) -> Context:
    return Context(ex.board.leaderboard(p.get("start", False)), "leaderboard.html.j2", "leaderboard", "lb")
