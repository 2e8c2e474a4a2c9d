"""Email channel: SMTP through aiosmtplib.

The ``Message-ID`` header is derived from ``message_id``, so a message re-sent after a
crash carries the same id and mail systems can collapse the duplicate. Marketing mail
carries ``List-Unsubscribe`` with the one-click link and ``List-Unsubscribe-Post``
(RFC 8058), from ``message.unsubscribe_url`` or built here when the channel config has
``unsubscribe_base_url`` and ``unsubscribe_secret``.

Config: ``host``, ``port`` (25), ``from_addr``, ``username``/``password`` (optional),
``use_tls`` (implicit TLS), ``start_tls`` (None: when offered), ``timeout_s``,
``message_id_domain`` (default: the domain of ``from_addr``), ``pool_size`` (idle
connections kept open between messages, 4; a reused one is checked with NOOP).

SMTP replies map by their class: 4xx (and dropped connections, timeouts) retry,
5xx fail.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import hashlib
import re
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any, ClassVar

import aiosmtplib

from ...clock import Clock
from ...errors import InvalidInput
from ..policy import unsubscribe_url
from .base import Channel, DeliveryResult, DeliveryStatus, Message, config_str

__all__ = ["EmailChannel", "message_id_header"]

# Long header values must stay one unencoded word: the default 78-column policy turns a
# long List-Unsubscribe URL into RFC 2047 encoded-words that mail clients cannot follow.
# 7-bit: non-ASCII text (Chinese subjects and bodies) is transfer-encoded, so no relay
# without 8BITMIME can mangle it.
_POLICY = email.policy.SMTP.clone(max_line_length=998, cte_type="7bit")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._\-]{1,200}$")


def message_id_header(message_id: str, domain: str) -> str:
    """``<id@domain>``; ids with characters RFC 5322 forbids are hashed, still stable."""
    local = message_id if _SAFE_ID.match(message_id) else hashlib.sha256(
        message_id.encode()).hexdigest()[:40]
    return f"<{local}@{domain}>"


def _smtp_result(code: int, text: str, what: str) -> DeliveryResult:
    status: DeliveryStatus = "retry" if 400 <= code < 500 else "failed"
    return DeliveryResult(status, f"{code} {text}", reason=f"smtp {code} ({what})")


class EmailChannel(Channel):
    """Mail over SMTP."""

    name: ClassVar[str] = "email"

    def __init__(self, config: Mapping[str, Any], *, clock: Clock | None = None) -> None:
        super().__init__(config, clock=clock)
        self.host = config_str(self.config, "host", self.name)
        port = self.config.get("port", 25)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise InvalidInput("channels.email.port", "must be a port number")
        self.port = port
        self.from_addr = config_str(self.config, "from_addr", self.name)
        _, addr = email.utils.parseaddr(self.from_addr)
        if "@" not in addr:
            raise InvalidInput("channels.email.from_addr", "must be an email address")
        self.sender = addr
        self.domain = config_str(self.config, "message_id_domain", self.name,
                                 default=addr.rsplit("@", 1)[1])
        self.username = self.config.get("username") or None
        self.password = self.config.get("password") or None
        self.use_tls = bool(self.config.get("use_tls", False))
        self.start_tls: bool | None = self.config.get("start_tls")
        # Idle connections kept open between messages (0: one connection per message).
        pool_size = self.config.get("pool_size", 4)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 0:
            raise InvalidInput("channels.email.pool_size", "must be an integer >= 0")
        self.pool_size = pool_size
        self._idle_conns: list[aiosmtplib.SMTP] = []
        self._idle_loop: asyncio.AbstractEventLoop | None = None
        self.connections_opened = 0
        self.unsub_base = str(self.config.get("unsubscribe_base_url") or "")
        self.unsub_secret = str(self.config.get("unsubscribe_secret") or "")

    def unsubscribe_link(self, message: Message) -> str:
        if message.unsubscribe_url:
            return message.unsubscribe_url
        if message.category != "marketing" or not (self.unsub_base and self.unsub_secret):
            return ""
        return unsubscribe_url(
            self.unsub_base, self.unsub_secret, project=message.project,
            user_id=message.user_id, group=message.subscription_group,
            issued_ms=self.clock.now_ms(),
        )

    def build(self, message: Message) -> EmailMessage:
        """The MIME message sent for ``message``."""
        mail = EmailMessage(policy=_POLICY)
        mail["From"] = self.from_addr
        mail["To"] = message.to
        mail["Subject"] = message.subject
        mail["Date"] = email.utils.formatdate(self.clock.now_ms() / 1000, usegmt=True)
        mail["Message-ID"] = message_id_header(message.message_id, self.domain)
        mail["X-Touchline-Message-Id"] = message.message_id
        link = self.unsubscribe_link(message)
        if link:
            mail["List-Unsubscribe"] = f"<{link}>"
            mail["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        mail.set_content(message.body)
        html = message.data.get("html")
        if isinstance(html, str) and html:
            mail.add_alternative(html, subtype="html")
        return mail

    async def send(self, message: Message) -> DeliveryResult:
        _, addr = email.utils.parseaddr(message.to)
        if "@" not in addr:
            return DeliveryResult("failed", reason=f"not an email address: {message.to!r}")
        mail = self.build(message)
        mid = str(mail["Message-ID"])
        # Flattened here: aiosmtplib would re-fold headers with its own 78-column policy.
        raw = mail.as_bytes(policy=_POLICY)
        try:
            smtp = await self._connection()
            try:
                refused, answer = await smtp.sendmail(self.sender, [addr], raw)
            except BaseException:
                # After an error the session's state is unknown: never reuse it.
                smtp.close()
                raise
            self._release(smtp)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            return _smtp_result(first.code, first.message, f"recipient {first.recipient}")
        except aiosmtplib.SMTPResponseException as exc:
            return _smtp_result(exc.code, exc.message, type(exc).__name__)
        except aiosmtplib.SMTPTimeoutError as exc:
            return DeliveryResult("retry", reason=f"timeout after {self.timeout_s:g}s: {exc}")
        except (aiosmtplib.SMTPException, OSError) as exc:
            return DeliveryResult("retry", reason=f"connection error: {exc!r}")
        if addr in refused:
            bad = refused[addr]
            return _smtp_result(bad.code, bad.message, f"recipient {addr}")
        return DeliveryResult("sent", answer, provider_message_id=mid, reason="accepted")

    # -- connections ---------------------------------------------------------------

    def _idle(self) -> list[aiosmtplib.SMTP]:
        """The idle connections of the running event loop (connections are loop-bound)."""
        loop = asyncio.get_running_loop()
        if self._idle_loop is not loop:
            # Connections of a finished loop cannot be used (or closed) from this one.
            self._idle_conns, self._idle_loop = [], loop
        return self._idle_conns

    async def _connection(self) -> aiosmtplib.SMTP:
        """An idle connection that still answers, or a new one.

        A reused connection is probed with NOOP first: a server that dropped it while
        idle costs one round trip here, instead of a half-sent message later.
        """
        idle = self._idle()
        while idle:
            smtp = idle.pop()
            if not smtp.is_connected:
                continue
            try:
                await smtp.noop()
            except (aiosmtplib.SMTPException, OSError):
                smtp.close()
                continue
            return smtp
        smtp = aiosmtplib.SMTP(
            hostname=self.host, port=self.port, username=self.username,
            password=self.password, use_tls=self.use_tls, start_tls=self.start_tls,
            timeout=self.timeout_s,
        )
        await smtp.connect()
        self.connections_opened += 1
        return smtp

    def _release(self, smtp: aiosmtplib.SMTP) -> None:
        idle = self._idle()
        if smtp.is_connected and len(idle) < self.pool_size:
            idle.append(smtp)
        else:
            smtp.close()

    async def aclose(self) -> None:
        idle = self._idle()
        while idle:
            smtp = idle.pop()
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                smtp.close()
