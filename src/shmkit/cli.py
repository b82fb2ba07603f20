"""Command-line tool (placeholder until cli lands)."""


def main(argv: list[str] | None = None) -> int:
    return 0
