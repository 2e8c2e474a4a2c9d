"""WeCom (企业微信) application message: ``POST /cgi-bin/message/send``.

Token: ``GET /cgi-bin/gettoken?corpid=..&corpsecret=..``, cached and renewed like
WeChat's. The message goes to one member (``touser`` = ``message.to``) from the
application ``agent_id``: a ``textcard`` when ``message.data["url"]`` is set (title,
description, url), else ``text``. WeCom's own duplicate check is switched on
(``enable_duplicate_check``) as a second guard behind the outbox's message id.

Config: ``corp_id``, ``corp_secret``, ``agent_id``, ``base_url``
(``https://qyapi.weixin.qq.com``), ``duplicate_check_interval`` (1800), ``timeout_s``.

Answers: ``errcode`` 0 with the member not listed in ``invaliduser`` is sent; 81013
(no valid recipient) and other codes fail; -1, 45009 and 45033 (busy, rate or
concurrency limits) retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .base import Message, config_int, config_str
from .wechat import WeixinChannel

__all__ = ["WeComChannel"]


class WeComChannel(WeixinChannel):
    """WeCom application messages to one member."""

    name: ClassVar[str] = "wecom"
    default_base_url: ClassVar[str] = "https://qyapi.weixin.qq.com"
    send_path: ClassVar[str] = "/cgi-bin/message/send"
    retry_errors: ClassVar[frozenset[int]] = frozenset({-1, 45009, 45033})
    # 45009: the application's per-member or daily frequency limit.
    retry_after_s: ClassVar[dict[int, float]] = {45009: 3600.0}

    def __init__(self, config: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.corp_id = config_str(self.config, "corp_id", self.name)
        self.corp_secret = config_str(self.config, "corp_secret", self.name)
        self.agent_id = config_int(self.config, "agent_id", self.name, default=0)
        self.dup_interval = config_int(self.config, "duplicate_check_interval", self.name,
                                       default=1800)

    def token_request(self) -> tuple[str, dict[str, str]]:
        return "/cgi-bin/gettoken", {"corpid": self.corp_id, "corpsecret": self.corp_secret}

    def body(self, message: Message) -> dict[str, Any]:
        body: dict[str, Any] = {
            "touser": message.to,
            "agentid": self.agent_id,
            "safe": 0,
            "enable_duplicate_check": 1,
            "duplicate_check_interval": self.dup_interval,
        }
        url = message.data.get("url")
        if url:
            body["msgtype"] = "textcard"
            body["textcard"] = {"title": message.subject or message.body[:128],
                                "description": message.body, "url": str(url),
                                "btntxt": str(message.data.get("button", "详情"))}
        else:
            content = f"{message.subject}\n{message.body}" if message.subject else message.body
            body["msgtype"] = "text"
            body["text"] = {"content": content}
        return body

    def check(self, message: Message, answer: dict[str, Any]) -> str | None:
        # Partly invalid recipients still answer errcode 0; ours is the only one.
        invalid = {u.strip().lower() for u in str(answer.get("invaliduser") or "").split("|")}
        if message.to.lower() in invalid:
            return f"invalid user {message.to!r} (not in the application's visible range)"
        return None
