"""The bundled lightweight Emu: model, data loader, tokenizer, metrics."""
