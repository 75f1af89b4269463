"""Where a run writes: checked before any decoding, so that an unwritable folder or an output
that would overwrite an input stops the run before the work, not after it."""
import os
import tempfile
import warnings
from pathlib import Path

from clip_hitchhiker.errors import ConfigError


def check_output_files(outputs, inputs, protected_folders=()):
    """Raise ConfigError unless every output file can be written and replaces no input.

    outputs: {option name: path or None}, e.g. {"--output_json": "r.json"};
    inputs: paths the run reads (CSV, checkpoint, videos); protected_folders: folders whose
    files are inputs (the dataset). Paths are compared after resolving '.', '..' and symlinks.
    """
    taken = {os.path.realpath(p): p for p in inputs}
    folders = [os.path.realpath(f) + os.sep for f in protected_folders]
    chosen = {}
    for option, path in outputs.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in taken:
            raise ConfigError(f"{option} {path} is an input of this run ({taken[real]}); "
                              "choose another file")
        if any(real.startswith(folder) for folder in folders):
            raise ConfigError(f"{option} {path} lies inside a dataset folder; choose a file "
                              "elsewhere")
        if real in chosen:
            raise ConfigError(f"{option} and {chosen[real]} name the same file {path}")
        if os.path.isdir(path):
            raise ConfigError(f"{option} {path} is a folder; give a file name")
        problem = folder_problem(Path(path).parent)
        if problem:
            raise ConfigError(f"{option} {path} cannot be written: {problem}")
        chosen[real] = option


def cache_is_writable(cache_dir):
    """True if cache_dir can receive cache entries; else a warning (the cache is only an
    optimisation: the run goes on without writing it)."""
    problem = folder_problem(Path(cache_dir))
    if problem:
        warnings.warn(f"the embedding cache folder {cache_dir} cannot be written ({problem}); "
                      "this run's embeddings will not be cached (set --cache_dir, or pass "
                      "--no_cache)", stacklevel=2)
    return problem is None


def folder_problem(folder):
    """Why a new file cannot be created in folder (made if missing), or None if it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None
