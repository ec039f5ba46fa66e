"""One module per stage: scan → spool → upload → wipe."""
