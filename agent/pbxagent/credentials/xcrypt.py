"""crypt(3) from libxcrypt through cffi: Python 3.13 dropped the `crypt` module, and
/etc/shadow hashes (yescrypt, sha512crypt, md5crypt of old boards) need the C library."""

from __future__ import annotations

from functools import cache
from typing import Any

# crypt_rn with caller-owned scratch (struct crypt_data, 32768 bytes in libxcrypt) is
# thread-safe, and cffi releases the GIL around the call: several candidates can be
# checked at once, one per core.
_CDEF = """
char *crypt_rn(const char *phrase, const char *setting, void *data, int size);
char *crypt_gensalt(const char *prefix, unsigned long count, const char *rbytes, int nrbytes);
"""
_CRYPT_DATA_SIZE = 32768

# The method new hashes use: yescrypt, as Debian's PAM does.
DEFAULT_PREFIX = "$y$"


class CryptError(ValueError):
    pass


@cache
def _lib() -> tuple[Any, Any]:
    import cffi  # on first use: later boots, which check nothing, never load it

    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    return ffi, ffi.dlopen("libcrypt.so.1")


def _crypt(phrase: str, setting: str) -> str:
    ffi, lib = _lib()
    scratch = ffi.new("char[]", _CRYPT_DATA_SIZE)
    out = lib.crypt_rn(phrase.encode(), setting.encode(), scratch, _CRYPT_DATA_SIZE)
    # libxcrypt returns a string starting with "*" (never a valid hash) on failure.
    result = "" if out == ffi.NULL else ffi.string(out).decode()
    if not result or result.startswith("*"):
        raise CryptError(f"crypt(3) cannot use the setting {setting[:4]!r}…")
    return result


def hash_password(password: str, prefix: str = DEFAULT_PREFIX) -> str:
    ffi, lib = _lib()
    # rbytes NULL: libxcrypt draws the salt from the OS random source.
    setting = lib.crypt_gensalt(prefix.encode(), 0, ffi.NULL, 0)
    if setting == ffi.NULL:
        raise CryptError(f"crypt_gensalt(3) does not know the method {prefix!r}")
    return _crypt(password, ffi.string(setting).decode())


def verify(password: str, crypt_hash: str) -> bool:
    """True when `password` hashes to `crypt_hash`; a locked or unknown hash never matches."""
    import hmac

    if not crypt_hash.startswith("$"):
        return False
    try:
        return hmac.compare_digest(_crypt(password, crypt_hash), crypt_hash)
    except CryptError:
        return False


def matches_any(words: list[str], crypt_hash: str) -> bool:
    """Whether any of `words` hashes to `crypt_hash`, checked on every core: a slow hash
    against dozens of candidates is most of a first boot's provisioning."""
    import os
    import threading

    found = threading.Event()

    def worker(share: list[str]) -> None:
        for word in share:
            if found.is_set():
                return
            if verify(word, crypt_hash):
                found.set()

    lanes = max(1, min(os.cpu_count() or 1, 4, len(words)))
    threads = [threading.Thread(target=worker, args=(words[i::lanes],)) for i in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found.is_set()
