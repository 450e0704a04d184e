"""One module per ``qwave`` subcommand; each exposes ``run(argv: list[str]) -> int``."""
