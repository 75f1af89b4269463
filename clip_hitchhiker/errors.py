"""The project's own exceptions. Their messages name the thing at fault and what to do, so the
CLI prints them as one line; any other exception keeps its traceback."""


class HitchhikerError(Exception):
    """Base of every error whose message is meant for the user as it is."""


class DatasetError(HitchhikerError, RuntimeError):
    """A dataset that cannot be downloaded, extracted or read."""


class VideoDecodeError(HitchhikerError, RuntimeError):
    """A video file that is missing or cannot be decoded; the message names the path."""


class ModelLoadError(HitchhikerError, RuntimeError):
    """CLIP weights that cannot be found, downloaded or read."""


class EmbeddingError(HitchhikerError, RuntimeError):
    """Embeddings that cannot be scored (zero or non-finite): a broken model."""


class ConfigError(HitchhikerError, ValueError):
    """A command-line setting that cannot work on this machine (e.g. --device cuda without CUDA)."""


class PeerFailure(HitchhikerError, RuntimeError):
    """Another rank of a distributed run failed; that rank reports the cause."""


class OutputError(HitchhikerError, OSError):
    """An output file (--output_json, --save_embeddings) that could not be written."""


class VideoIndexError(HitchhikerError, RuntimeError):
    """A search index folder that is damaged, in use, or made with other settings; the message
    names the file and how to repair or rebuild it."""


class QueryError(HitchhikerError, ValueError):
    """A search that cannot be answered as asked: an empty query, k < 1, text embeddings of the
    wrong width or not finite; the message names the query or setting."""
