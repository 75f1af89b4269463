"""Infrastructure behind run_msr_retrieval.py and data_loader.py, one job per module:

    errors          the project's own exceptions (the CLI prints them as one line)
    downloads       resumable HTTP download, safe zip extraction, restricted unpickling
    clip_models     CLIP loading and chunked frame / caption encoding
    embedding_cache cache key, path, atomic save and safe load of embeddings
    torchrun        device choice, process group, collectives that never hang a rank
    output_files    output and cache locations checked before any decoding
"""
