"""crypt(3) from libxcrypt through cffi: Python 3.13 dropped the `crypt` module, and
/etc/shadow hashes (yescrypt, sha512crypt, md5crypt of old boards) need the C library."""

from __future__ import annotations

from functools import cache
from typing import Any

_CDEF = """
char *crypt(const char *phrase, const char *setting);
char *crypt_gensalt(const char *prefix, unsigned long count, const char *rbytes, int nrbytes);
"""

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
    out = lib.crypt(phrase.encode(), setting.encode())
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
