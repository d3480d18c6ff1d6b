"""A real SMTP server on 127.0.0.1 (aiosmtpd) for notification tests: it keeps every message it receives, and
with `password` it requires AUTH LOGIN/PLAIN with that password (no TLS: loopback only)."""
from __future__ import annotations

import email
import email.policy
import threading
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from testkit.rtsp import free_port


class SmtpReceiver:
    """`with SmtpReceiver(password="pw") as smtp:` then send to 127.0.0.1:smtp.port; smtp.messages holds the
    parsed messages, smtp.logins the (user, password) of every AUTH attempt."""

    def __init__(self, user: str | None = None, password: str | None = None) -> None:
        self.user = user
        self.password = password
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[tuple[str, str]] = []
        self.received = threading.Condition()
        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                message = email.message_from_bytes(envelope.original_content or envelope.content,
                                                   policy=email.policy.default)
                with receiver.received:
                    receiver.messages.append(message)
                    receiver.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
                    receiver.received.notify_all()
                return "250 OK"

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            if not isinstance(data, LoginPassword):
                return AuthResult(success=False, handled=False)
            login = (data.login.decode("utf-8", "replace"), data.password.decode("utf-8", "replace"))
            with receiver.received:
                receiver.logins.append(login)
            return AuthResult(success=login == (receiver.user, receiver.password))

        self.port = free_port()
        kwargs: dict[str, Any] = {}
        if password is not None:
            kwargs = {"authenticator": authenticate, "auth_require_tls": False, "auth_required": True}
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **kwargs)

    def wait_for(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least n messages arrived (True) or timeout (False)."""
        with self.received:
            return self.received.wait_for(lambda: len(self.messages) >= n, timeout)

    def __enter__(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
