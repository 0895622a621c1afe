"""Models: offline assets, loading and tokenization, the batched token-NLL engine, generation, sentence embeddings."""
