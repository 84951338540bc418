"""Resolve what `--model` names into local files: an HF repo id, a local path, a GGUF file or repo, or a demo
`test:` model (built on first use by qwen3_api.demo_models)."""

from __future__ import annotations

import logging
from pathlib import Path

from qwen3_api.config import DEFAULT_MODEL
from qwen3_api.errors import ModelLoadError
from qwen3_api.models.gguf import resolve_gguf

logger = logging.getLogger(__name__)

# The original docs named a repo that does not exist on the hub; it always meant the 4B instruct model.
MODEL_ALIASES = {"Qwen/Qwen3-4B-Instruct": DEFAULT_MODEL}
HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.tiktoken", "tokenizer*"]
OFFLINE_HINT = (
    "Pass a local model directory with --model /path/to/model (config.json, tokenizer, *.safetensors), "
    "or run the offline demo: qwen3-api serve --model test:tiny"
)


def canonical_model_name(name: str) -> str:
    """The model id after aliases, warning when an alias was used."""
    if name in MODEL_ALIASES:
        logger.warning("model %r does not exist on the hub; using %r instead", name, MODEL_ALIASES[name])
        return MODEL_ALIASES[name]
    return name


def _check_model_dir(path: Path) -> Path:
    missing = [f for f in ("config.json",) if not (path / f).exists()]
    has_weights = any(path.glob("*.safetensors"))
    has_tokenizer = (path / "tokenizer.json").exists() or (path / "vocab.json").exists()
    if missing or not has_weights or not has_tokenizer:
        lacking = missing + ([] if has_weights else ["*.safetensors"]) + ([] if has_tokenizer else ["tokenizer.json"])
        raise ModelLoadError(f"{path} is not a complete model directory: missing {', '.join(lacking)}")
    return path


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILE_PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        logger.info("%s is not in the local HF cache; downloading from the hub", repo_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILE_PATTERNS))
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(f"model {repo_id!r} was not found on the hub. {OFFLINE_HINT}") from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ModelLoadError(
            f"model {repo_id!r} is not in the local HF cache and the hub cannot be reached. {OFFLINE_HINT}"
        ) from exc


def test_model_options(name: str) -> dict[str, object]:
    """The options of a `test:<shape>[:key=value,...]` spec; a bad spec is a ModelLoadError."""
    from qwen3_api.demo_models.checkpoints import parse_test_model_spec

    try:
        return parse_test_model_spec(name)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc


def resolve_model(name: str) -> Path:
    """A local directory holding the model `name` names, downloading or building it when needed."""
    if name.startswith("test:"):
        from qwen3_api.demo_models.checkpoints import cached_test_model

        options = test_model_options(name)
        options.pop("gguf", None)  # the directory the GGUF is made from; resolve_gguf_model gives the file
        return cached_test_model(**options)  # type: ignore[arg-type]
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file; --model takes a model directory or an HF repo id")
        return _check_model_dir(path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(
            f"{name!r} is neither an existing directory nor an HF repo id (owner/name). {OFFLINE_HINT}"
        )
    return _check_model_dir(_download(canonical_model_name(name)))


def resolve_gguf_model(name: str) -> Path:
    """The local GGUF file `name` names (see `models.gguf.is_gguf_spec`), downloading (HF repo) or building (demo
    `test:...:gguf=TYPE` spec) it when needed."""
    if not name.startswith("test:"):
        return resolve_gguf(name)
    from qwen3_api.demo_models.gguf import cached_test_gguf

    options = test_model_options(name)
    qtype = options.pop("gguf", None)
    if qtype is None:
        example = name + (",gguf=Q8_0" if name.count(":") >= 2 else ":gguf=Q8_0")
        raise ModelLoadError(f"{name!r} names no GGUF type; add one, e.g. {example}")
    return cached_test_gguf(qtype, **options)  # type: ignore[arg-type]
