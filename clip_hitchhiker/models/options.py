"""The model, device, preprocessing and decoder options that the evaluator, the trainer and the
search indexer share: declared once here, checked once here, so that the scripts cannot drift
apart.
"""
import os
import re

from clip_hitchhiker.models.backends import BACKENDS
from clip_hitchhiker.errors import ConfigError
from clip_hitchhiker.video.decoders import DECODE_ON, DECODERS

__all__ = ["DEVICE_PATTERN", "PREPROCESS_ON", "add_encoding_arguments", "add_model_arguments",
           "check_model_arguments", "decode_device", "loader_workers", "resolve_preprocess_on"]

PREPROCESS_ON = ("auto", "workers", "device")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def add_model_arguments(parser, *, download_root=True, index_defaults=False):
    """--backend, --model, --pretrained, (--download_root), --device, --num_workers, --antialias,
    --preprocess_on, --decoder, --decode_on, as one argument group. index_defaults: --backend
    and --model default to None, for the search index's own model to fill in."""
    group = parser.add_argument_group("model and preprocessing")
    add = group.add_argument
    default = ("default: the index's own model; for a new index, clip's ViT-B/16"
               if index_defaults else None)
    add("--backend", default=None if index_defaults else "clip", choices=BACKENDS,
        help="the CLIP library: clip (OpenAI's, the release's) or open_clip (any open_clip "
             f"model) ({default or 'default clip'})")
    add("--model", default=None if index_defaults else "ViT-B/16",
        help="clip: a clip.available_models() name or a checkpoint file (TorchScript or state "
             "dict); open_clip: an architecture such as ViT-B-16 "
             f"({default or 'default ViT-B/16'})")
    add("--pretrained", default=None, metavar="TAG_OR_FILE",
        help="open_clip only: a pretrained tag (openai, laion2b_s34b_b88k, ...) or a local "
             "weights file (default openai)")
    if download_root:
        add("--download_root", default=None,
            help="where CLIP weights are downloaded (default ~/.cache/clip)")
    add("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    add("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
        help="DataLoader decoding workers (default: the CPUs, at most 8)")
    add("--antialias", action="store_true",
        help="resize frames with antialias (closer to CLIP's PIL training preprocessing); the "
             "default is the release-era resize without it, which made the published figures")
    add("--preprocess_on", default="auto", choices=PREPROCESS_ON,
        help="where frames are resized, cropped and normalised: in the DataLoader workers, or "
             "on the model's device from the decoded uint8 frames (auto: device on CUDA, "
             "workers otherwise)")
    add("--decoder", default="decord", choices=DECODERS,
        help="the video decoder: decord (the release's; default), pyav (FFmpeg in its wheel, "
             "installs anywhere), torchcodec (needs FFmpeg's shared libraries), or auto "
             "(decord when it imports, else pyav; pyav also for a video decord cannot read). "
             "All give the same frames: see docs/decoders.md")
    add("--decode_on", default="cpu", choices=DECODE_ON,
        help="where videos are decoded: cpu (default) or device (--decoder torchcodec on the "
             "CUDA --device; decoding then runs in the main process, --num_workers 0)")
    return group


def add_encoding_arguments(parser):
    """--batch_size (videos per DataLoader batch) and --frame_chunk, for the scripts that only
    encode (the evaluator, the indexer); the trainer's batch is the contrastive batch."""
    group = parser.add_argument_group("encoding")
    group.add_argument("--batch_size", type=int, default=1,
                       help="videos per DataLoader batch (default 1)")
    group.add_argument("--frame_chunk", type=int, default=256,
                       help="frames per encode_image call, across videos (default 256)")
    return group


def check_model_arguments(parser, args):
    """parser.error for the shared options' bad values (those present in args)."""
    for name in ("batch_size", "frame_chunk"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.num_workers < 0:
        parser.error(f"--num_workers must be >= 0, got {args.num_workers}")
    if args.pretrained is not None and args.backend not in ("open_clip", None):
        parser.error("--pretrained is for --backend open_clip; with clip, --model names the "
                     "weights")
    decode_on = getattr(args, "decode_on", "cpu")
    if decode_on == "device" and (args.decoder != "torchcodec" or args.device == "cpu"):
        parser.error(f"--decode_on device decodes with --decoder torchcodec on a CUDA --device, "
                     f"got --decoder {args.decoder} --device {args.device}")
    if not DEVICE_PATTERN.fullmatch(args.device):
        parser.error(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r} (other "
                     "accelerators such as mps are not supported)")


def resolve_preprocess_on(preprocess_on, device):
    """"workers" or "device": auto means the device when it is CUDA (where resizing is cheap and
    CPU workers would be the bottleneck), else the workers."""
    if preprocess_on not in PREPROCESS_ON:
        raise ValueError(f"preprocess_on must be one of {PREPROCESS_ON}, got {preprocess_on!r}")
    if preprocess_on == "auto":
        return "device" if device.type == "cuda" else "workers"
    return preprocess_on


def decode_device(decode_on, device):
    """Where read_video decodes: "cpu", or the model's CUDA device for --decode_on device."""
    if decode_on not in DECODE_ON:
        raise ValueError(f"decode_on must be one of {DECODE_ON}, got {decode_on!r}")
    if decode_on == "cpu":
        return "cpu"
    if device.type != "cuda":
        raise ConfigError(f"--decode_on device decodes on CUDA, but the run's device is "
                          f"{device}; use --decode_on cpu")
    return str(device)


def loader_workers(num_workers, decode_on):
    """DataLoader workers: none when decoding on the GPU (forked workers cannot use CUDA)."""
    return 0 if decode_on == "device" else num_workers
