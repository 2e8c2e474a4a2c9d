"""Sensors Analytics wire records, shaped exactly as each SDK sends them.

Four client SDK flavours (Android, iOS, the JS SDK in official-account H5 pages, the
mini program SDK) and the Python SDK that the brand's servers (kiosk backend, WeCom
backend, order system, CRM) use. What differs between them is data in :data:`FLAVORS`:

- client SDKs send ``identities`` (the anonymous id under the flavour's key, plus
  ``$identity_login_id`` after login), top-level ``anonymous_id``/``login_id``,
  ``_track_id`` (random plus time, not unique) and ``_flush_time`` (the send time);
- the Python SDK sends ``project`` and, for login ids, ``$is_login_id``; its profile
  records carry no ``$lib`` in ``properties`` (sdk.py passes the profile dict as is).

Every record whose ``distinct_id`` is a login id carries ``$is_login_id: true``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .draw import Draw

__all__ = ["FLAVORS", "PROJECT", "Device", "Flavor", "Wire"]

PROJECT = "default"


@dataclass(frozen=True, slots=True)
class Flavor:
    lib: str
    version: str
    id_key: str  # the identities key of the device's anonymous id
    lib_extra: tuple[tuple[str, Any], ...] = ()
    presets: tuple[tuple[str, Any], ...] = ()


FLAVORS: dict[str, Flavor] = {
    "android": Flavor("Android", "6.8.3", "$identity_anonymous_id",
                      (("$app_version", "5.3.0"),),
                      (("$os", "Android"), ("$app_version", "5.3.0"), ("$wifi", True))),
    "ios": Flavor("iOS", "4.7.1", "$identity_anonymous_id",
                  (("$app_version", "5.3.0"),),
                  (("$os", "iOS"), ("$app_version", "5.3.0"), ("$wifi", True))),
    "js": Flavor("js", "1.27.11", "$identity_cookie_id", (),
                 (("$timezone_offset", -480), ("$screen_width", 390),
                  ("$screen_height", 844), ("$latest_traffic_source_type", "社交网站流量"))),
    "mp": Flavor("MiniProgram", "1.21.8", "$identity_anonymous_id", (),
                 (("$scene", "wx-1089"), ("$network_type", "wifi"))),
}

# The `lib` object of each flavour (copied into each record, never shared).
_LIBS: dict[str, dict[str, Any]] = {
    name: {"$lib": f.lib, "$lib_method": "code", "$lib_version": f.version, **dict(f.lib_extra)}
    for name, f in FLAVORS.items()
}

# Properties every track record of a flavour starts with: `$lib`, version, presets.
_PROPS: dict[str, dict[str, Any]] = {
    name: {"$lib": f.lib, "$lib_version": f.version, **dict(f.presets)}
    for name, f in FLAVORS.items()
}
_NONE: Mapping[str, Any] = MappingProxyType({})

_PY_LIB = "python"
_PY_VERSION = "1.11.0"


@dataclass(slots=True)
class Device:
    """One SDK install: an app on a phone or tablet, the mini program, a browser."""

    flavor: str
    anon: str
    logged_in: bool = False
    model: str = ""
    presets: dict[str, Any] = field(default_factory=dict)


class Wire:
    """Builds records; ``draw`` supplies ``_track_id`` and flush delays."""

    __slots__ = ("_draw",)

    def __init__(self, draw: Draw) -> None:
        self._draw = draw

    # client SDKs ---------------------------------------------------------------

    def _client(self, dev: Device, login: str | None, t: int, kind: str,
                properties: dict[str, Any]) -> dict[str, Any]:
        f = FLAVORS[dev.flavor]
        identities = {f.id_key: dev.anon}
        rec: dict[str, Any] = {
            "type": kind,
            "time": t,
            "distinct_id": dev.anon,
            "properties": properties,
            "lib": _LIBS[dev.flavor].copy(),
            "identities": identities,
            "anonymous_id": dev.anon,
        }
        if login is not None:
            identities["$identity_login_id"] = login
            rec["distinct_id"] = login
            rec["login_id"] = login
            properties["$is_login_id"] = True
        u = self._draw.u()
        rec["_track_id"] = 100_000_000 + int(u * 899_999_999)
        # Clients batch and retry: the send time trails the event by up to a minute.
        rec["_flush_time"] = t + int(u * u * 60_000)
        return rec

    def client_track(self, dev: Device, login: str | None, t: int, event: str,
                     props: Mapping[str, Any], more: Mapping[str, Any] = _NONE,
                     ) -> dict[str, Any]:
        """A client event; ``more`` is merged after ``props`` (saves a dict per call)."""
        properties = {**_PROPS[dev.flavor], **dev.presets, **props, **more}
        rec = self._client(dev, login, t, "track", properties)
        rec["event"] = event
        return rec

    def client_signup(self, dev: Device, login: str, t: int) -> dict[str, Any]:
        """The login call: ``$SignUp`` linking the device's anonymous id to ``login``."""
        properties = {**_PROPS[dev.flavor], **dev.presets}
        rec = self._client(dev, login, t, "track_signup", properties)
        rec["event"] = "$SignUp"
        rec["original_id"] = dev.anon
        return rec

    def client_profile(self, dev: Device, login: str | None, t: int, op: str,
                       props: dict[str, Any]) -> dict[str, Any]:
        return self._client(dev, login, t, "profile_" + op, dict(props))

    # the Python SDK (the brand's servers) ----------------------------------------

    @staticmethod
    def _server(kind: str, t: int, distinct_id: str, properties: dict[str, Any],
                login: bool) -> dict[str, Any]:
        if login:
            properties["$is_login_id"] = True
        return {
            "type": kind,
            "time": t,
            "distinct_id": distinct_id,
            "properties": properties,
            "lib": {"$lib": _PY_LIB, "$lib_version": _PY_VERSION, "$lib_method": "code"},
            "project": PROJECT,
        }

    def server_track(self, login: str, t: int, event: str, props: Mapping[str, Any],
                     more: Mapping[str, Any] = _NONE) -> dict[str, Any]:
        properties = {"$lib": _PY_LIB, "$lib_version": _PY_VERSION, **props, **more}
        rec = self._server("track", t, login, properties, True)
        rec["event"] = event
        return rec

    def server_profile(self, login: str, t: int, op: str,
                       props: dict[str, Any]) -> dict[str, Any]:
        return self._server("profile_" + op, t, login, dict(props), True)

    def server_bind(self, login: str, t: int, identities: dict[str, str]) -> dict[str, Any]:
        """``track_id_bind``: SensorsAnalytics.bind(login, mobile/openid/unionid ...)."""
        properties: dict[str, Any] = {"$lib": _PY_LIB, "$lib_version": _PY_VERSION}
        rec = self._server("track_id_bind", t, login, properties, True)
        rec["identities"] = {"$identity_login_id": login, **identities}
        rec["event"] = "$BindID"
        return rec

    @staticmethod
    def item_set(t: int, item_type: str, item_id: str,
                 props: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "item_set",
            "time": t,
            "lib": {"$lib": _PY_LIB, "$lib_version": _PY_VERSION, "$lib_method": "code"},
            "item_type": item_type,
            "item_id": item_id,
            "properties": dict(props),
            "project": PROJECT,
        }
