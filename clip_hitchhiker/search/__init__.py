"""Searching your own videos: which of the user's files an index run looks at
(`video_listing`), the index's on-disk format (`index_format`), its crash-safe incremental writer
(`index_writer`), the FAISS stage-1 candidates (`candidate_index`) and the reader that scores
candidates by query-scoring and returns moments (`video_index.VideoIndex`), with the checks of
the queries and settings it is given (`queries`); image and "more like this" queries
(`query_embeddings`), moment clips (`moment_clips`) and the page's bounded cache of them
(`clip_cache`), the JSON report (`search_report`), the
local search page over an index (`server`, with `static/`, which alone imports starlette and
uvicorn), which model encodes for an index (`index_model`), and the hits' thumbnails
(`thumbnails`).
It may import `query_scoring`, `clip_hitchhiker.moments` (the moment rule) and the package's
infrastructure modules (errors, embedding_cache, run_folder, torchrun's device check); the model
is loaded through `clip_hitchhiker.models` only when text is encoded. Nothing here imports the
scripts.
"""
