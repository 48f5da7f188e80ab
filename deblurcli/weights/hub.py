"""The Hugging Face Hub client: the real ``huggingface_hub`` with one-line errors.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``
once, at import. We read them again at each call so that a library caller (or a test) that
sets them later is still obeyed, and pass them on explicitly. huggingface_hub is imported
on first use, so commands that never touch the Hub do not pay for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from deblurcli.errors import WeightsUnavailableError

_TRUE = {"1", "on", "yes", "true"}
DEFAULT_ENDPOINT = "https://huggingface.co"
# Seconds to wait for the Hub to accept a connection (and for the metadata request) before
# deciding it is unreachable: huggingface_hub's own default retries for ~30 s. A slow link
# raises the metadata wait with huggingface_hub's own variable, HF_HUB_ETAG_TIMEOUT.
CONNECT_TIMEOUT = 3.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def cache_dir() -> Path:
    """The Hub cache in use: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, as huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        home = os.path.join(xdg, "huggingface")
    return Path(home).expanduser() / "hub"


def _endpoint() -> str | None:
    value = os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def hub_reachable(endpoint: str | None = None, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Whether a TCP connection to the Hub's host opens within ``timeout`` seconds.

    Behind a proxy the direct connection says nothing, so it is not tried (True).
    """
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    url = urlsplit(endpoint or _endpoint() or DEFAULT_ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _metadata_timeout() -> float:
    """Seconds to wait for the metadata answer: ``HF_HUB_ETAG_TIMEOUT`` if set and valid."""
    try:
        return max(float(os.environ.get("HF_HUB_ETAG_TIMEOUT", CONNECT_TIMEOUT)), 0.1)
    except ValueError:
        return CONNECT_TIMEOUT


@contextlib.contextmanager
def _quiet_hub_logs() -> Iterator[None]:
    """huggingface_hub logs each retry; the one-line error that follows says it all."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def cached_file(
    repo_id: str, filename: str, revision: str, *, cache: Path | None = None
) -> Path | None:
    """The file's path in the Hub cache, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        repo_id, filename, cache_dir=str(cache or cache_dir()), revision=revision
    )
    return Path(found) if isinstance(found, str) else None


def _what(repo_id: str, filename: str, revision: str) -> str:
    return f"'{filename}' from hf://{repo_id}@{revision[:12]}"


def download(
    repo_id: str,
    filename: str,
    revision: str,
    *,
    cache: Path | None = None,
    force: bool = False,
    name: str | None = None,
) -> Path:
    """Fetch one file into the Hub cache (a no-op when cached) and return its path.

    ``name`` (the manifest name) only makes the "not available offline" hint precise.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:  # huggingface_hub 1.x+ speaks HTTP through httpx2; older ones used requests (OSError)
        from httpx2 import HTTPError as transport_error
    except ImportError:  # pragma: no cover
        transport_error = OSError

    cache = cache or cache_dir()
    what = _what(repo_id, filename, revision)
    offline = is_offline()
    # No network: answer from the cache at once rather than after huggingface_hub's retries.
    local_only = offline or not hub_reachable()
    try:
        with _quiet_hub_logs():
            path = hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=str(cache),
                endpoint=_endpoint(),
                local_files_only=local_only,
                force_download=force and not local_only,
                etag_timeout=_metadata_timeout(),
            )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        fetch = name or f"hf://{repo_id}/{filename}@{revision}"
        raise WeightsUnavailableError(
            f"{what} is not in the Hugging Face cache ({cache}) and {why}; run 'deblur weights "
            f"download {fetch}' where the Hub is reachable and copy that cache (HF_HOME) here, "
            "or pass {model} PATH to a local checkpoint",
            mentions=("model",),
        ) from None
    except GatedRepoError:
        raise WeightsUnavailableError(f"{what}: the repository is gated; log in first") from None
    except RepositoryNotFoundError:
        raise WeightsUnavailableError(f"{what}: no such Hub repository (or private)") from None
    except RevisionNotFoundError:
        raise WeightsUnavailableError(f"{what}: no such revision in the repository") from None
    except EntryNotFoundError:
        raise WeightsUnavailableError(f"{what}: no such file in the repository") from None
    except (HfHubHTTPError, transport_error, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsUnavailableError(f"{what}: download failed ({first})") from None
    return Path(path)


def upload_folder(
    folder: Path,
    repo_id: str,
    *,
    branch: str = "main",
    private: bool = False,
    message: str = "Upload deblurcli model",
) -> str:
    """Create ``repo_id`` if needed and commit ``folder``'s files to ``branch``; the commit sha.

    The token is huggingface_hub's usual one (``HF_TOKEN`` or ``hf auth login``).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        from httpx2 import HTTPError as transport_error
    except ImportError:  # pragma: no cover
        transport_error = OSError

    if is_offline():
        raise WeightsUnavailableError("cannot push: HF_HUB_OFFLINE is set")
    api = HfApi(endpoint=_endpoint())
    where = f"hf://{repo_id}@{branch}"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, revision=branch, commit_message=message
        )
    except (HfHubHTTPError, transport_error, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsUnavailableError(f"push to {where} failed ({first})") from None
    return str(info.oid)
