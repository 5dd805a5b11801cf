"""File hashes of a logged model: recorded at registration, checked before anything is loaded.

:func:`anomaly.registry.register` records the SHA-256 of every file of the logged model (the
detector's JSON and arrays, the pyfunc's code file, ``MLmodel``, the environment files) as
model-version tags ``sha256.<path>``; :func:`anomaly.registry.load_detector` and
:func:`anomaly.registry.load_pyfunc` download the version and :func:`verify` it against those
tags before reading or running any of it. The pyfunc's ``load_context`` checks the detector
folder against the hashes the model was logged with (``model_config["sha256"]``), for loads
that bypass the project (``mlflow models serve``). What this does and does not protect:
docs/reliability.md, "Model integrity".
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

#: model-version tag prefix; the rest of the key is the file's path inside the model
TAG_PREFIX = "sha256."
#: written by the MLflow client itself when it downloads a registered version (name and
#: version, no code): not in the artifact store, so not recorded
CLIENT_FILES = frozenset({"registered_model_meta"})


class IntegrityError(ValueError):
    """A model file differs from, lacks or adds to what was recorded: refuse to load."""


def sha256(path: Path) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """``{path relative to folder (with /): SHA-256}`` of every file under ``folder`` but
    :data:`CLIENT_FILES`."""
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() not in CLIENT_FILES
    }


def as_tags(hashes: dict[str, str]) -> dict[str, str]:
    """Hashes as model-version tags."""
    return {TAG_PREFIX + name: digest for name, digest in hashes.items()}


def from_tags(tags: dict[str, str]) -> dict[str, str]:
    """The hashes recorded in model-version tags."""
    return {k[len(TAG_PREFIX) :]: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}


def verify(folder: Path, expected: dict[str, str], what: str) -> None:
    """Raise :class:`IntegrityError`, naming the first bad file, unless the files under
    ``folder`` are exactly those of ``expected`` with the same SHA-256."""
    if not expected:
        msg = (
            f"{what} has no recorded file hashes (registered before integrity checks): "
            "refusing to load it; train and register it again"
        )
        raise IntegrityError(msg)
    actual = file_hashes(folder)
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            msg = f"{what}: {name} is missing (recorded at registration): refusing to load it"
        elif name not in expected:
            msg = f"{what}: {name} was not there at registration: refusing to load it"
        elif not hmac.compare_digest(actual[name].encode(), expected[name].encode()):
            msg = (
                f"{what}: {name} does not match the SHA-256 recorded at registration: "
                "refusing to load it"
            )
        else:
            continue
        raise IntegrityError(msg)
