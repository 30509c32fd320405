"""regent — access tokens from the local regent agent, over libregent (ctypes).

Standard library only. The C library is found through ``$REGENT_LIBRARY`` (a
path), else next to this package (``libregent.so`` / ``libregent.dylib`` /
``regent.dll``), else the system's library search path.

    import regent

    with regent.Client(app="editor") as client:          # $REGENT_SOCKET or the default socket
        token = client.token(min_valid=60)                # valid for at least 60 s
        headers = {"Authorization": f"{token.token_type} {token.access_token}"}

Errors raise :class:`RegentError`, carrying the error table's number
(``.code``, the same as the C ``regent_result`` and the CLI's exit status) and
name (``.name``). A :class:`Client` may be shared between threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import enum
import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Union

__all__ = [
    "Client",
    "Code",
    "Event",
    "RegentError",
    "Subscription",
    "Token",
    "User",
    "library_version",
]


class Code(enum.IntEnum):
    """The error table (DESIGN §7): the same numbers as ``regent_result``."""

    OK = 0
    NOT_ENROLLED = 1
    REGISTRATION_TOKEN_INVALID = 2
    REGISTRATION_TOKEN_EXPIRED = 3
    REGISTRATION_TOKEN_EXHAUSTED = 4
    REGISTRATION_TOKEN_DISABLED = 5
    REVOKED = 6
    UNAVAILABLE = 7
    RATE_LIMITED = 8
    TOKEN_LIMIT = 9
    NO_FREE_INSTANCE = 10
    PERMISSION_DENIED = 11
    BAD_REQUEST = 12
    UNSUPPORTED_VERSION = 13
    AGENT_UNREACHABLE = 14
    TIMEOUT = 15
    STORE_UNAVAILABLE = 16
    CONFIG = 17
    SERVER_ERROR = 18
    INTERNAL = 19
    CLIENT_CREDENTIALS_INVALID = 20
    ALREADY_ENROLLED = 21
    SIGN_IN_FAILED = 22


class RegentError(Exception):
    """A failed call: ``code`` (a :class:`Code`, which compares equal to its
    number; a plain ``int`` for a number this binding does not know),
    ``name``, ``message`` and, when the agent gave one, ``retry_after``
    (seconds)."""

    def __init__(self, code: int, message: str, retry_after: Optional[float] = None) -> None:
        number = int(code)
        self.code: Union[Code, int] = (
            Code(number) if number in Code._value2member_map_ else number
        )
        self.name: str = _result_name(number)
        self.message: str = message
        self.retry_after: Optional[float] = retry_after
        super().__init__(f"{self.name}: {message}" if message else self.name)

    @property
    def is_retryable(self) -> bool:
        """Whether trying again later may succeed without anyone changing anything."""
        return bool(_library().regent_result_is_retryable(int(self.code)))

    @property
    def retryable(self) -> bool:
        """The 0.1 name of ``is_retryable``; removed in 0.3."""
        return self.is_retryable


@dataclass(frozen=True, repr=False)
class Token:
    """An access token. ``access_token`` (the bearer value) goes into an
    ``Authorization`` header; it is left out of ``repr``. (A Python string
    cannot be wiped from memory: keep tokens no longer than needed.)"""

    access_token: str
    token_type: str
    expires_at_ms: int
    scope: Optional[str] = None

    @property
    def expires_at(self) -> datetime.datetime:
        """When the token expires (UTC)."""
        return datetime.datetime.fromtimestamp(self.expires_at_ms / 1000, tz=datetime.timezone.utc)

    def remaining(self) -> float:
        """Seconds the token stays valid from now (wall clock); 0 once expired."""
        now_ms = datetime.datetime.now(tz=datetime.timezone.utc).timestamp() * 1000
        return max(0.0, (self.expires_at_ms - now_ms) / 1000)

    @property
    def value(self) -> str:
        """The 0.1 name of ``access_token``; removed in 0.3."""
        return self.access_token

    def __repr__(self) -> str:
        return (
            f"Token(access_token=[redacted], token_type={self.token_type!r}, "
            f"expires_at={self.expires_at.isoformat()}, scope={self.scope!r})"
        )


@dataclass(frozen=True)
class User:
    """Who is signed in to the agent (``regent login``), as the identity
    provider named them: ``sub`` (its stable subject id), and
    ``preferred_username``, ``email`` and the granted ``scope`` when known."""

    sub: str
    preferred_username: Optional[str] = None
    email: Optional[str] = None
    scope: Optional[str] = None


@dataclass(frozen=True)
class Event:
    """Something a subscription reports: ``kind`` is ``"token"`` (a new
    ``token``), ``"state"`` (the agent's new ``state``, with ``error`` when a
    failure caused it) or ``"error"`` (the subscription's connection failed;
    the library resubscribes by itself)."""

    kind: str
    token: Optional[Token] = None
    state: Optional[str] = None
    error: Optional[RegentError] = None


# --- the C library ---------------------------------------------------------------

_c_uint32 = ctypes.c_uint32
_c_uint64 = ctypes.c_uint64
_handle = ctypes.c_void_p
_out = ctypes.POINTER(ctypes.c_void_p)


class _Event(ctypes.Structure):
    _fields_ = [
        ("kind", _c_uint32),
        ("result", _c_uint32),
        ("token", _handle),
        ("state", ctypes.c_char_p),
        ("message", ctypes.c_char_p),
        ("retry_after_ms", _c_uint64),
    ]


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(_Event))

_EVENT_KINDS = {1: "token", 2: "state", 3: "error"}

_SIGNATURES = {
    "regent_version": ([], ctypes.c_char_p),
    "regent_last_error_message": ([], ctypes.c_char_p),
    "regent_last_error_retry_after_ms": ([], _c_uint64),
    "regent_result_name": ([_c_uint32], ctypes.c_char_p),
    "regent_result_message": ([_c_uint32], ctypes.c_char_p),
    "regent_result_is_retryable": ([_c_uint32], ctypes.c_bool),
    "regent_client_options_new": ([_out], _c_uint32),
    "regent_client_options_set_app": ([_handle, ctypes.c_char_p], _c_uint32),
    "regent_client_options_set_socket": ([_handle, ctypes.c_char_p], _c_uint32),
    "regent_client_options_set_instance": ([_handle, ctypes.c_char_p], _c_uint32),
    "regent_client_options_set_connect_timeout_ms": ([_handle, _c_uint32], _c_uint32),
    "regent_client_options_set_request_timeout_ms": ([_handle, _c_uint32], _c_uint32),
    "regent_client_options_set_agent_uid": ([_handle, _c_uint32], _c_uint32),
    "regent_client_options_set_wait_for_instance_ms": ([_handle, _c_uint32], _c_uint32),
    "regent_client_options_free": ([_handle], None),
    "regent_client_connect": ([_handle, _out], _c_uint32),
    "regent_client_token": ([_handle, _c_uint32, _out], _c_uint32),
    "regent_client_subscribe": ([_handle, _c_uint32, _CALLBACK, ctypes.c_void_p, _out], _c_uint32),
    "regent_client_free": ([_handle], None),
    "regent_token_access_token": ([_handle], ctypes.c_char_p),
    "regent_token_type": ([_handle], ctypes.c_char_p),
    "regent_token_scope": ([_handle], ctypes.c_char_p),
    "regent_token_expires_at_ms": ([_handle], _c_uint64),
    "regent_token_remaining_ms": ([_handle], _c_uint64),
    "regent_token_free": ([_handle], None),
    "regent_subscription_free": ([_handle], None),
    "regent_client_user": ([_handle, _out], _c_uint32),
    "regent_user_sub": ([_handle], ctypes.c_char_p),
    "regent_user_preferred_username": ([_handle], ctypes.c_char_p),
    "regent_user_email": ([_handle], ctypes.c_char_p),
    "regent_user_scope": ([_handle], ctypes.c_char_p),
    "regent_user_free": ([_handle], None),
}

_lib: Optional[ctypes.CDLL] = None
_lib_lock = threading.Lock()


def _find_library() -> str:
    explicit = os.environ.get("REGENT_LIBRARY")
    if explicit:
        return explicit
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("libregent.so", "libregent.dylib", "regent.dll"):
        candidate = os.path.join(here, name)
        if os.path.exists(candidate):
            return candidate
    found = ctypes.util.find_library("regent")
    if found:
        return found
    raise OSError(
        "libregent was not found: set REGENT_LIBRARY to its path, or put it next to "
        f"the regent package ({here})"
    )


def _library() -> ctypes.CDLL:
    """Loads libregent once (CDLL: the GIL is released during each call)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            lib = ctypes.CDLL(_find_library())
            for name, (argtypes, restype) in _SIGNATURES.items():
                function = getattr(lib, name)
                function.argtypes = argtypes
                function.restype = restype
            _lib = lib
        return _lib


def _text(raw: Optional[bytes]) -> str:
    return raw.decode("utf-8", "replace") if raw is not None else ""


def _result_name(code: int) -> str:
    try:
        return _text(_library().regent_result_name(code))
    except OSError:
        return Code(code).name if code in Code._value2member_map_ else "UNKNOWN"


def _check(rc: int) -> None:
    """Raises the calling thread's last error when ``rc`` is not OK (read on
    the same thread, right after the call: the message is per thread)."""
    if rc != Code.OK:
        lib = _library()
        retry_ms = lib.regent_last_error_retry_after_ms()
        raise RegentError(
            rc, _text(lib.regent_last_error_message()), retry_ms / 1000 if retry_ms else None
        )


def _seconds(value: float, what: str) -> int:
    if value < 0:
        raise ValueError(f"{what} must not be negative")
    return min(int(-(-value // 1)), 2**32 - 1)  # whole seconds, rounded up


def _millis(value: float, what: str) -> int:
    if value <= 0:
        raise ValueError(f"{what} must be positive")
    return min(max(1, int(value * 1000)), 2**32 - 1)


def _token_from(handle: int) -> Token:
    lib = _library()
    scope = lib.regent_token_scope(handle)
    return Token(
        access_token=_text(lib.regent_token_access_token(handle)),
        token_type=_text(lib.regent_token_type(handle)),
        expires_at_ms=int(lib.regent_token_expires_at_ms(handle)),
        scope=_text(scope) if scope is not None else None,
    )


def library_version() -> str:
    """The version of the libregent loaded, e.g. ``"0.1.0"``."""
    return _text(_library().regent_version())


class Subscription:
    """Events pushed by the agent to a callback on a library thread. ``close()``
    (or leaving a ``with`` block) stops it; once it returns, the callback does
    not run again."""

    def __init__(self, handle: int, trampoline: object) -> None:
        self._handle: Optional[int] = handle
        self._trampoline = trampoline  # the C callback must outlive the subscription
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            # Joins the library thread; ctypes releases the GIL meanwhile, so a
            # callback waiting for it can finish.
            _library().regent_subscription_free(handle)

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class Client:
    """A connection to the regent agent; thread-safe.

    ``socket``: the agent's socket (default ``$REGENT_SOCKET``, else the
    platform default); ``app``: the application's name (the agent's audit
    log shows it); ``request_timeout``: seconds one call may take (default
    30; ``timeout``, its 0.1 name, is still accepted); ``connect_timeout``:
    seconds to connect (default 2); ``instance``: a stable instance id for
    per-instance licensing; ``wait_for_instance``: seconds a token request
    waits for a free slot of a per-instance agent before
    ``NO_FREE_INSTANCE`` (default: no wait); ``agent_uid``: the uid
    the agent runs as when it is neither yours nor root's (default
    ``$REGENT_AGENT_UID``).

    Raises :class:`RegentError` (e.g. ``AGENT_UNREACHABLE``) when the agent
    cannot be reached, or when the server on the socket runs as another
    user (neither yours, root, ``agent_uid`` nor the owner of a private
    socket directory): nothing is sent to it.
    """

    def __init__(
        self,
        socket: Union[str, "os.PathLike[str]", None] = None,
        app: Optional[str] = None,
        request_timeout: Optional[float] = None,
        *,
        connect_timeout: Optional[float] = None,
        instance: Optional[str] = None,
        wait_for_instance: Optional[float] = None,
        agent_uid: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> None:
        if timeout is not None:
            if request_timeout is not None:
                raise ValueError("give request_timeout or its 0.1 name timeout, not both")
            request_timeout = timeout
        lib = _library()
        self._handle: Optional[int] = None
        # Held during each call: close() must not free the handle under a call
        # (the library serialises calls on one connection anyway).
        self._lock = threading.Lock()
        options = ctypes.c_void_p()
        _check(lib.regent_client_options_new(ctypes.byref(options)))
        try:
            if socket is not None:
                _check(lib.regent_client_options_set_socket(options, os.fsencode(socket)))
            if app is not None:
                _check(lib.regent_client_options_set_app(options, app.encode("utf-8")))
            if instance is not None:
                _check(lib.regent_client_options_set_instance(options, instance.encode("utf-8")))
            if agent_uid is not None:
                if isinstance(agent_uid, bool) or not 0 <= agent_uid <= 0xFFFFFFFF:
                    raise ValueError(f"agent_uid must be a uid (0 to 4294967295), not {agent_uid!r}")
                _check(lib.regent_client_options_set_agent_uid(options, agent_uid))
            if request_timeout is not None:
                _check(
                    lib.regent_client_options_set_request_timeout_ms(
                        options, _millis(request_timeout, "request_timeout")
                    )
                )
            if wait_for_instance is not None:
                _check(
                    lib.regent_client_options_set_wait_for_instance_ms(
                        options, _millis(wait_for_instance, "wait_for_instance")
                    )
                )
            if connect_timeout is not None:
                _check(
                    lib.regent_client_options_set_connect_timeout_ms(
                        options, _millis(connect_timeout, "connect_timeout")
                    )
                )
            handle = ctypes.c_void_p()
            _check(lib.regent_client_connect(options, ctypes.byref(handle)))
            self._handle = handle.value
        finally:
            lib.regent_client_options_free(options)

    def _live(self) -> int:
        if self._handle is None:
            raise ValueError("the regent client is closed")
        return self._handle

    def token(self, min_valid: float = 60) -> Token:
        """A token valid for at least ``min_valid`` seconds (rounded up).

        Raises :class:`RegentError`: ``NOT_ENROLLED``, ``REVOKED``,
        ``UNAVAILABLE`` (see ``retry_after``), ``AGENT_UNREACHABLE``, ``TIMEOUT``…
        """
        lib = _library()
        seconds = _seconds(min_valid, "min_valid")
        out = ctypes.c_void_p()
        with self._lock:
            _check(lib.regent_client_token(self._live(), seconds, ctypes.byref(out)))
        try:
            return _token_from(out.value)  # type: ignore[arg-type]
        finally:
            lib.regent_token_free(out)

    def user(self) -> Optional[User]:
        """Who is signed in to the agent, or ``None`` when it holds a device
        enrollment (or nothing), or when this process is not the agent's own
        account (the agent tells only it, and root, who is signed in).

        Raises :class:`RegentError`: ``AGENT_UNREACHABLE``, ``TIMEOUT``…
        """
        lib = _library()
        out = ctypes.c_void_p()
        with self._lock:
            _check(lib.regent_client_user(self._live(), ctypes.byref(out)))
        if not out.value:
            return None
        try:
            optional = lambda raw: _text(raw) if raw is not None else None  # noqa: E731
            return User(
                sub=_text(lib.regent_user_sub(out)),
                preferred_username=optional(lib.regent_user_preferred_username(out)),
                email=optional(lib.regent_user_email(out)),
                scope=optional(lib.regent_user_scope(out)),
            )
        finally:
            lib.regent_user_free(out)

    def subscribe(self, callback: Callable[[Event], None], min_valid: float = 60) -> Subscription:
        """Calls ``callback(event)`` on a library thread with the current token,
        each renewed token (before the previous one drops below ``min_valid``)
        and the agent's state changes. Returns a :class:`Subscription`; close it
        to stop. An exception from the callback is reported through
        ``sys.unraisablehook`` and otherwise ignored."""
        lib = _library()
        seconds = _seconds(min_valid, "min_valid")

        def deliver(_userdata: Optional[int], raw: "ctypes._Pointer[_Event]") -> None:
            # An exception here is reported by ctypes (sys.unraisablehook) and
            # goes no further: it never unwinds into the C library.
            event = raw.contents
            kind = _EVENT_KINDS.get(event.kind)
            if kind is None:
                return  # an event kind from a newer library
            error = None
            if event.result != Code.OK:
                error = RegentError(
                    event.result,
                    _text(event.message),
                    event.retry_after_ms / 1000 if event.retry_after_ms else None,
                )
            token = _token_from(event.token) if kind == "token" else None
            state = _text(event.state) if event.state is not None else None
            callback(Event(kind=kind, token=token, state=state, error=error))

        trampoline = _CALLBACK(deliver)
        out = ctypes.c_void_p()
        with self._lock:
            _check(
                lib.regent_client_subscribe(
                    self._live(), seconds, trampoline, None, ctypes.byref(out)
                )
            )
        return Subscription(out.value, trampoline)  # type: ignore[arg-type]

    def close(self) -> None:
        """Closes the connection (subscriptions keep running until closed)."""
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            _library().regent_client_free(handle)

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
