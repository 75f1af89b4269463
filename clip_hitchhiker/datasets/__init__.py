"""The benchmarks beyond MSR-VTT: Charades (action recognition, mAP), Charades-STA (moments),
ActivityNet Captions (paragraph retrieval and moments), their shared moment data, and `choice`,
which puts every dataset behind `--dataset`. MSR-VTT, CSV datasets, frame sampling and decoding
stay in `data_loader.py` (the design card's module), which these may import, with
`clip_hitchhiker.downloads`, `embedding_cache` and `errors`; nothing here imports a script, the
models or the search.
"""
