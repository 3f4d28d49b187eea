"""Reading a corpus: validate, stats, preview."""
