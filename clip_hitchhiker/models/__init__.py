"""The models: one interface over OpenAI `clip` and `open_clip` (`backends`), CLIP loading and
chunked frame and caption encoding across ranks (`clip_models`), and the model, device and
preprocessing options that every script declares once (`options`). It may import
`clip_hitchhiker.video` (decoder options), `data_loader` (preprocessing) and the infrastructure
modules (errors, downloads, embedding_cache, torchrun); never the datasets, search or scripts.
"""
