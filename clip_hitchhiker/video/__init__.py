"""Reading video: the decoders behind `--decoder` (decord, PyAV, torchcodec) and their frame
table (`decoders`), time-based sampling (`sampling`), and how many frames fit in memory
(`batch_memory`). It may import only `clip_hitchhiker.errors`, numpy, torch and the decoder
libraries: everything that reads video builds on it, and it builds on nothing of the project.
"""
