"""A first start killed while it creates the gallery key leaves no key, not an empty one.

Found by the crash-consistency sweep (``python -m bench.reliability``): the key file was created
(``O_CREAT | O_EXCL``) and then written, so a kill between the two left a 0-byte key that every
later start refused ("does not hold a 32-byte key"), although no template had ever been sealed with
it. Here the kill is real: a child creates the key under ``RLIMIT_FSIZE`` 0 with the default action
of ``SIGXFSZ``, so the kernel kills it at its first byte written.
"""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

import numpy as np

from appliance.gallery.crypto import KEY_BYTES, create_key
from appliance.gallery.store import TemplateStore


def _killed_while_creating_the_key(key: Path) -> int:
    """Fork a child that creates ``key`` and is killed at its first write; the signal that ended it."""
    pid = os.fork()
    if pid == 0:  # the child: no Python cleanup, only the kill or _exit
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            create_key(key)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


def test_a_kill_while_the_key_is_written_leaves_no_key(tmp_path: Path) -> None:
    key = tmp_path / "gallery.key"
    assert _killed_while_creating_the_key(key) == signal.SIGXFSZ
    assert not key.exists(), f"a {key.stat().st_size}-byte key was left behind"
    store = TemplateStore.open(tmp_path / "gallery.db", key)  # the next start creates a key and works
    with store:
        vector = np.ones((1, 128), np.float32) / np.sqrt(128)
        store.add("ada", "Ada Lovelace", "mobilefacenet@test", vector)
        assert [identity.id for identity in store.identities()] == ["ada"]
    assert len(key.read_bytes()) == KEY_BYTES


def test_the_key_is_created_whole_with_mode_0600_and_never_replaced(tmp_path: Path) -> None:
    key = tmp_path / "gallery.key"
    created = create_key(key)
    assert key.read_bytes() == created and len(created) == KEY_BYTES
    assert key.stat().st_mode & 0o777 == 0o600
    assert not [path.name for path in tmp_path.iterdir() if path.name != "gallery.key"], (
        "a temporary file stayed"
    )
