"""Corpus-wide operations: mix, EVA-CLIP features and their encoder."""
