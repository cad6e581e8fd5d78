"""The command-line commands of `python -m storymem_core`: the parser and dispatch (cli), story, demo; each calls
the engine below it, which never imports from here (see docs/architecture.md)."""
