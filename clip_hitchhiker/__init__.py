"""Everything behind the top-level scripts, in one package. Capabilities are subpackages, each
with its own docstring saying what it holds and may import:

    models/         CLIP and open_clip behind one interface, encoding, the shared options
    video/          decoders, time-based sampling, frame memory
    datasets/       the dataset registry behind --dataset and --suite, one module a dataset
    moments/        the moment rule, its baselines and the moment benchmark
    search/         the search index: format, writer, stage-1 candidates, VideoIndex

and single modules for the infrastructure they share:

    errors          the project's own exceptions (the CLI prints them as one line)
    downloads       resumable HTTP download, safe zip extraction, restricted unpickling
    embedding_cache cache key, path, atomic save and safe load of embeddings
    torchrun        device choice, process group, collectives that never hang a rank
    output_files    output and cache locations checked before any decoding
    run_folder      a folder's lock, moving old files aside, stale temporary files
    suite           the --suite plan and its table (Markdown, CSV, JSON)
    reporting, bootstrap, plots, training, synthetic_data, demo
"""
