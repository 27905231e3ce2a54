"""The argparse side of every `mlsys VERB NOUN` command: one module per group of verbs, each
with `add_commands(verbs)`. A handler turns its arguments into one call of a typed function
(in `compose/` or a domain), prints what it returned, and nothing else, so every command is
also callable from Python."""
