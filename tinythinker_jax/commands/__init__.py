"""Subcommands of the `tinythinker` console command, one module each."""
