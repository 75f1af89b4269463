"""A version 1 index (the format before codes: no "codes" entry, stage-1 vector ids of 16
segment bits, no path_bytes, inode or ctime_ns columns, no journal) written as the version 1
writer wrote one commit, for upgrade tests."""
import time
from pathlib import Path

import pyarrow.parquet as pq

from clip_hitchhiker.search import candidate_index
from clip_hitchhiker.search import index_format as fmt
from clip_hitchhiker.search.index_writer import write_videos


def write_v1_index(folder, config, encoded, stage1="auto", version=1):
    """One commit of the EncodedVideos `encoded` into a new folder, in format version 1 (or 2:
    version 1 with the table's path_bytes, inode and ctime_ns columns, and a journal)."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    rows = write_videos(folder, encoded, 1)
    rows["id"] = list(range(len(rows["path"])))
    order = sorted(range(len(rows["path"])), key=lambda r: rows["path"][r])
    table = {c: [rows[c][r] for r in order] for c in fmt.TABLE_COLUMNS}
    table_name = "videos-000001.parquet"
    fmt.write_table(folder / table_name, table)
    if version == 1:  # version 1's table: without the columns version 2 added
        version_1 = pq.read_table(folder / table_name).drop_columns(["path_bytes", "inode",
                                                                     "ctime_ns"])
        (folder / table_name).unlink()
        pq.write_table(version_1, folder / table_name)
    else:
        fmt.write_journal(folder, [])
    means, ids = fmt.segment_vectors(folder, table, config["embed_dim"], segment_bits=16)
    kind = candidate_index.choose_type(stage1, len(ids))
    index, params = candidate_index.build(kind, means, ids)
    stage1_name = "stage1-000001.faiss"
    (folder / stage1_name).write_bytes(candidate_index.serialize(index))
    names = sorted(set(table["frames_file"]) | set(table["means_file"])) + [table_name,
                                                                             stage1_name]
    manifest = {"format": fmt.FORMAT, "version": version, "generation": 1, "config": config,
                "table": table_name,
                "stage1": {"file": stage1_name, "type": kind, "requested": stage1,
                           "params": params},
                "videos": len(table["path"]),
                "frames": int(sum(len(t) for t in table["frame_times"])),
                "next_id": len(table["path"]), "skipped": [],
                "files": {n: fmt.file_record(folder, n) for n in names},
                "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    fmt.write_manifest(folder, manifest)
    return manifest
