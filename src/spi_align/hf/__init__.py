"""transformers plumbing shared by the policy and every model beside it: loading models (`models.py`), padded
batches and the backbone runner (`batches.py`), the growing KV cache (`kv_cache.py`), the side cache of models
that read the policy's tokens (`side_cache.py`) or its text through another tokenizer (`text_cache.py`), and
comparing tokenizers (`tokenizers.py`)."""
