"""Signed decision ids: what a decision decided, verifiable when its outcome comes back.

A decision id is ``"<variant>.<48 base64url chars>"``: 36 bytes, a 24-byte payload and
the first 12 bytes (96 bits) of ``HMAC-SHA256(key, context || payload)``, where the
context binds the placement, the variant and the network (length-prefixed strings), so an
id is only valid for the outcome of that placement, variant and network. Payload
(big-endian)::

    version u8 = 1 | nonce 9 bytes | placement tag u16 | network tag u16 | floor_cpm f32
    | propensity code u16 | floor propensity code u16 | floor density code u16

A waterfall or auction decision (a *plan*) has an id of the same form but its own layout
and MAC domain (``adbandit/plan/1``; the context binds placement and variant)::

    version u8 = 2 | nonce 9 bytes | placement tag u16 | plan propensity code u16
    | k u8 | k × (network tag u16 | floor_cpm f32)

the k offers in calling order, so its body has 36 + 8k base64 characters (never the 48 of
a single decision). Its outcome, one response per called network, verifies when every
response names an offer of the plan at its floor (:meth:`DecisionSigner.verify_plan`).

The tags (16-bit blake2b of the ids) only make error messages precise ("issued for
network 'alpha'"); the MAC is what is trusted. Propensities are 16-bit log codes
(:func:`serving.variants.propensity_code`, relative error < 0.04%); the floor density (of
log floor given the network, per unit log CPM; continuous floors only) is a signed 16-bit
log code of step 1/1024 in log2 (relative error < 0.034%, range 2^±32), 0xFFFF for none.

A **floors id** is the decision id of a model group of the Prebid floors document
(:mod:`serving.prebid`): Prebid.js draws one group per auction and hands its
``modelVersion`` to every bid request of the auction, so the group's ``modelVersion`` ends
in ``#<floors id>`` and the analytics script posts that id as each event's
``decision_id``. Same form, ``"<variant>.<40 base64url chars>"`` (30 bytes, never the 48
of a decision or the 36 + 8k of a plan), its own MAC domain (``adbandit/prebid/1``, the
context binds the variant)::

    version u8 = 3 | flags u8 (bit 0: fallback) | issued_at u32 (epoch s) | nonce 8 bytes
    | model digest u32

``fallback``: the group published another variant's floors (the champion's, while the
variant has too little data), so no propensity of the variant's own policy applies. The
model digest (32-bit blake2b of the group's ``modelVersion`` without the id) ties the id to
the models it was issued with, for diagnostics. A floors id is checked by
:meth:`DecisionSigner.verify_floors`: the MAC, then its age (``max_age_s``, bounded so a
copied id stops working). Unlike a decision id, an event with a floors id that does not
verify is *rejected* (:mod:`serving.intake`): the id is also the credential a page posts
with when the write key is set.

An outcome whose id does not verify, or names another placement, network or floor, is
*accepted without propensities* and learned as if it had no decision id (by the
champion): the observation itself (network, floor, fill, price) is still true data, but
no propensity from it is trusted, so no forged id can give an off-policy weight of 1e9.
Such events are counted (``events_unverified_decision_total``).

The key: ``ADBANDIT_DECISION_KEY`` when set (every replica behind a load balancer needs
the same one), else 32 random bytes in ``STATE_DIR/decision.key`` created at first start
with mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import os
import struct
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from bandit.errors import InvalidConfig
from serving.variants import propensity_code, propensity_codes

log = logging.getLogger(__name__)

VERSION = 1
PAYLOAD = struct.Struct(">B9sHHfHHH")
MAC_BYTES = 12
ID_BYTES = PAYLOAD.size + MAC_BYTES  # 36: a multiple of 3, so base64 needs no padding
ID_CHARS = ID_BYTES * 4 // 3
KEY_FILE = "decision.key"
KEY_BYTES = 32
_DOMAIN = b"adbandit/decision/1"
_PLAN_DOMAIN = b"adbandit/plan/1"
PLAN_VERSION = 2
PLAN_HEAD = struct.Struct(">B9sHHB")
PLAN_OFFER = struct.Struct(">Hf")
#: Floors in an outcome may differ from the decision's by rounding to cents (ad servers
#: and networks often take floors in cents) plus float noise; anything more is another floor.
FLOOR_ABS_TOLERANCE = 0.005
FLOOR_REL_TOLERANCE = 1e-6

_FLOORS_DOMAIN = b"adbandit/prebid/1"
FLOORS_VERSION = 3
FLOORS_PAYLOAD = struct.Struct(">BBI8sI")
FLOORS_ID_CHARS = (FLOORS_PAYLOAD.size + MAC_BYTES) * 4 // 3  # 40
FLOORS_FALLBACK = 0x01
#: Seconds a floors id may be ahead of the server's clock (clock skew between replicas).
FLOORS_MAX_AHEAD_S = 300.0

_LOG2_STEPS = 2048.0
_DENSITY_STEPS = 1024.0
_DENSITY_NONE = 0xFFFF
_DENSITY_ZERO = 0x8000


def density_codes(density: NDArray[np.float64]) -> NDArray[np.uint16]:
    """16-bit codes of densities [n] (NaN, 0 or negative: none)."""
    d = np.asarray(density, dtype=np.float64)
    ok = np.isfinite(d) & (d > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        code = np.rint(np.log2(np.where(ok, d, 1.0)) * _DENSITY_STEPS) + _DENSITY_ZERO
    return np.where(ok, np.clip(code, 0, _DENSITY_NONE - 1), _DENSITY_NONE).astype(np.uint16)


def _density_code(d: float) -> int:
    if not (d > 0.0 and math.isfinite(d)):
        return _DENSITY_NONE
    return min(max(round(math.log2(d) * _DENSITY_STEPS) + _DENSITY_ZERO, 0), _DENSITY_NONE - 1)


def density_of_code(code: int) -> float:
    return math.nan if code == _DENSITY_NONE else 2.0 ** ((code - _DENSITY_ZERO) / _DENSITY_STEPS)


#: Decoded values of every 16-bit code (a look-up is ten times cheaper than a power).
_PROPENSITY_OF = (2.0 ** (-np.arange(65536) / _LOG2_STEPS)).tolist()
_DENSITY_OF = [density_of_code(c) for c in range(65536)]


@lru_cache(maxsize=4096)
def tag(value: str) -> int:
    """16-bit tag of an id (diagnostics only)."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=2).digest(), "big")


def _context(domain: bytes, *parts: str) -> bytes:
    """What a MAC binds under ``domain``: a single decision's placement, variant and network
    (``_DOMAIN``), a plan's placement and variant (``_PLAN_DOMAIN``) or a floors id's variant
    (``_FLOORS_DOMAIN``), each part length-prefixed."""
    out = [domain]
    for s in parts:
        b = s.encode()
        out.append(len(b).to_bytes(2, "big") + b)
    return b"".join(out)


def _id_bytes(body: str) -> bytes | None:
    """The bytes of an id's base64url body (strict ``urlsafe_b64decode`` at half its cost);
    None when it is not base64."""
    try:
        return binascii.a2b_base64(body.replace("-", "+").replace("_", "/"), strict_mode=True)
    except (binascii.Error, ValueError):
        return None


class Verdict(NamedTuple):
    """What an outcome's decision id says: ``ok`` with the decision's variant and
    propensities, or not ``ok`` with ``reason`` (then the propensities are NaN).
    (A named tuple: verifying is on the ingest path, a few µs per event.)"""

    ok: bool
    variant: str | None = None
    propensity: float = math.nan
    floor_propensity: float = math.nan
    floor_density: float = math.nan
    reason: str = ""


class FloorsVerdict(NamedTuple):
    """What a floors id says: ``ok`` with the variant whose model group the auction drew,
    when the document was issued and whether the group published another variant's floors;
    or not ``ok`` with ``reason``."""

    ok: bool
    variant: str | None = None
    issued_at: float = math.nan
    fallback: bool = False
    reason: str = ""


def is_floors_id(decision_id: object) -> bool:
    """Whether ``decision_id`` has the shape of a floors id (``<variant>.<40 chars>``); whether
    it verifies is :meth:`DecisionSigner.verify_floors`'s question."""
    if not isinstance(decision_id, str):
        return False
    _, sep, body = decision_id.rpartition(".")
    return bool(sep) and len(body) == FLOORS_ID_CHARS


def model_digest(model_version: str) -> int:
    """32-bit digest of a model group's ``modelVersion`` (without its id)."""
    return int.from_bytes(hashlib.blake2b(model_version.encode(), digest_size=4).digest(), "big")


class DecisionSigner:
    """Issues and verifies decision ids with one secret key (see the module docstring).

    HMAC-SHA256 (RFC 2104) is computed from precomputed hash states: the inner state has
    absorbed ``key ^ ipad`` and the context of a (placement, variant, network), the outer
    one ``key ^ opad``; an id then costs two ``copy``/``update``/``digest`` rounds (about
    1 µs, against 2.4 µs for ``hmac.digest`` rebuilding both pads every call).
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a decision key needs at least 16 bytes")
        key = bytes(key)
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self._contexts: dict[tuple, object] = {}

    def _inner_for(self, domain: bytes, *parts: str):  # -> hashlib sha256 state
        """The key's inner hash state after the context of ``parts`` under ``domain``
        (:func:`_context`), cached (bounded)."""
        k = (domain, *parts)
        state = self._contexts.get(k)
        if state is None:
            state = self._inner.copy()
            state.update(_context(domain, *parts))
            if len(self._contexts) > 100_000:
                self._contexts.clear()
            self._contexts[k] = state
        return state

    def _mac(self, inner, payload: bytes) -> bytes:
        h = inner.copy()
        h.update(payload)
        o = self._outer.copy()
        o.update(h.digest())
        return o.digest()[:MAC_BYTES]

    def issue(
        self,
        placement: str,
        variant: str,
        network: str,
        floor_cpm: float,
        propensity: float,
        floor_propensity: float,
        floor_density: float = math.nan,
    ) -> str:
        payload = PAYLOAD.pack(
            VERSION,
            os.urandom(9),
            tag(placement),
            tag(network),
            floor_cpm,
            propensity_code(propensity),
            propensity_code(floor_propensity),
            _density_code(floor_density),
        )
        mac = self._mac(self._inner_for(_DOMAIN, placement, variant, network), payload)
        return f"{variant}.{base64.urlsafe_b64encode(payload + mac).decode()}"

    def issue_batch(
        self,
        placement: str,
        variant: str,
        network_ids: Sequence[str],
        network: NDArray[np.int64],
        floor_cpm: NDArray[np.float64],
        propensity: NDArray[np.float64],
        floor_propensity: NDArray[np.float64],
        floor_density: NDArray[np.float64] | None = None,
    ) -> list[str]:
        """Ids of one variant's decisions, columns [n] (``network`` indexes ``network_ids``)."""
        n = len(network)
        rows = np.empty((n, PAYLOAD.size), dtype=np.uint8)
        rows[:, 0] = VERSION
        rows[:, 1:10] = np.frombuffer(os.urandom(9 * n), dtype=np.uint8).reshape(n, 9)
        rows[:, 10:12] = np.frombuffer(tag(placement).to_bytes(2, "big"), dtype=np.uint8)
        ntags = np.array([tag(x) for x in network_ids], dtype=">u2").view(np.uint8).reshape(-1, 2)
        rows[:, 12:14] = ntags[network]
        rows[:, 14:18] = np.asarray(floor_cpm, dtype=">f4").view(np.uint8).reshape(n, 4)
        density = np.full(n, np.nan) if floor_density is None else floor_density
        codes = np.stack(
            [propensity_codes(propensity), propensity_codes(floor_propensity), density_codes(density)], axis=1
        ).astype(">u2")
        rows[:, 18:24] = codes.view(np.uint8).reshape(n, 6)
        payloads = rows.tobytes()
        inners = [self._inner_for(_DOMAIN, placement, variant, x) for x in network_ids]
        outer, size = self._outer, PAYLOAD.size
        parts = []
        for i, j in enumerate(network.tolist()):
            p = payloads[size * i : size * i + size]
            h = inners[j].copy()
            h.update(p)
            o = outer.copy()
            o.update(h.digest())
            parts.append(p)
            parts.append(o.digest()[:MAC_BYTES])
        text = base64.urlsafe_b64encode(b"".join(parts)).decode()
        head = f"{variant}."
        return [head + text[ID_CHARS * i : ID_CHARS * i + ID_CHARS] for i in range(n)]

    def verify(
        self, decision_id: str, placement: str, network: str, floor_cpm: float, networks: Iterable[str] = ()
    ) -> Verdict:
        """Check an outcome's ``decision_id`` against the outcome's placement, network and
        floor (``networks``: the placement's network ids, to name the one an id was for)."""
        variant, sep, body = decision_id.rpartition(".")
        if sep and len(body) >= 44 and (len(body) - 36) % 8 == 0:  # a plan's id (36 + 8k chars)
            return Verdict(False, reason="it is a waterfall or auction decision id: report its outcome with responses")
        if not sep or len(body) != ID_CHARS:
            return Verdict(False, reason="not a decision id of this service")
        raw = _id_bytes(body)
        if raw is None or len(raw) != ID_BYTES:
            return Verdict(False, reason="not a decision id of this service")
        if raw[0] != VERSION:
            return Verdict(False, reason=f"decision id version {raw[0]} is not known")
        payload, mac = raw[: PAYLOAD.size], raw[PAYLOAD.size :]
        _, _, ptag, ntag, floor, p, fp, d = PAYLOAD.unpack_from(raw)
        expected = self._mac(self._inner_for(_DOMAIN, placement, variant, network), payload)
        if not hmac.compare_digest(mac, expected):
            if ptag != tag(placement):
                why = f"it was issued for another placement than {placement!r}"
            elif ntag != tag(network):
                named = [x for x in networks if tag(x) == ntag and x != network]
                other = f"network {named[0]!r}" if len(named) == 1 else "another network"
                why = f"it was issued for {other}, the event names {network!r}"
            else:
                why = "its signature does not verify (altered, forged, or signed with another key)"
            return Verdict(False, reason=why)
        if abs(floor_cpm - floor) > FLOOR_ABS_TOLERANCE + FLOOR_REL_TOLERANCE * abs(floor):
            return Verdict(False, reason=f"it was issued for floor_cpm {floor:.6g}, the event has {floor_cpm:g}")
        return Verdict(True, variant, _PROPENSITY_OF[p], _PROPENSITY_OF[fp], _DENSITY_OF[d])

    def issue_floors(self, variant: str, model_version: str, *, issued_at: float, fallback: bool = False) -> str:
        """Floors id of one model group of a Prebid floors document (module docstring)."""
        payload = FLOORS_PAYLOAD.pack(
            FLOORS_VERSION,
            FLOORS_FALLBACK if fallback else 0,
            max(0, min(int(issued_at), 0xFFFFFFFF)),
            os.urandom(8),
            model_digest(model_version),
        )
        mac = self._mac(self._inner_for(_FLOORS_DOMAIN, variant), payload)
        return f"{variant}.{base64.urlsafe_b64encode(payload + mac).decode()}"

    def verify_floors(self, floors_id: str, *, now: float, max_age_s: float) -> FloorsVerdict:
        """Check a floors id: issued by this service (MAC), at most ``max_age_s`` seconds ago
        and not ahead of ``now`` by more than :data:`FLOORS_MAX_AHEAD_S`."""
        variant, sep, body = floors_id.rpartition(".")
        if not sep or len(body) != FLOORS_ID_CHARS:
            return FloorsVerdict(False, reason="not a floors id of this service")
        raw = _id_bytes(body)
        if raw is None or len(raw) != FLOORS_PAYLOAD.size + MAC_BYTES or raw[0] != FLOORS_VERSION:
            return FloorsVerdict(False, reason="not a floors id of this service")
        payload, mac = raw[: FLOORS_PAYLOAD.size], raw[FLOORS_PAYLOAD.size :]
        if not hmac.compare_digest(mac, self._mac(self._inner_for(_FLOORS_DOMAIN, variant), payload)):
            return FloorsVerdict(
                False, reason="its signature does not verify (altered, forged, or signed with another key)"
            )
        _, flags, issued_at, _, _ = FLOORS_PAYLOAD.unpack(payload)
        age = now - issued_at
        if age > max_age_s:
            return FloorsVerdict(
                False,
                reason=f"it expired: issued {age:.0f} s ago, a floors id is valid for {max_age_s:g} s "
                "(ADBANDIT_PREBID_ID_MAX_AGE_S); the page must fetch its floors again",
            )
        if -age > FLOORS_MAX_AHEAD_S:
            return FloorsVerdict(False, reason=f"it was issued {-age:.0f} s ahead of the server's clock")
        return FloorsVerdict(True, variant, float(issued_at), bool(flags & FLOORS_FALLBACK))

    def issue_plan(self, placement: str, variant: str, offers: Sequence[tuple[str, float]], propensity: float) -> str:
        """Id of a waterfall or auction decision: its (network, floor_cpm) offers in calling
        order and the probability of the whole plan (module docstring)."""
        if not 1 <= len(offers) <= 255:
            raise ValueError(f"a plan has 1 to 255 offers, got {len(offers)}")
        payload = PLAN_HEAD.pack(PLAN_VERSION, os.urandom(9), tag(placement), propensity_code(propensity), len(offers))
        payload += b"".join(PLAN_OFFER.pack(tag(network), floor) for network, floor in offers)
        mac = self._mac(self._inner_for(_PLAN_DOMAIN, placement, variant), payload)
        return f"{variant}.{base64.urlsafe_b64encode(payload + mac).decode()}"

    def verify_plan(self, decision_id: str, placement: str, responses: Sequence[tuple[str, float]]) -> Verdict:
        """Check a multi-network outcome's ``decision_id``: a plan of ``placement`` whose offers
        include every (network, floor_cpm) of ``responses`` (a waterfall reports only the
        tiers it called). Floors compare as in :meth:`verify`; the verdict's ``propensity``
        is the plan's, its ``floor_propensity`` 1 (the plan fixes the floors)."""
        variant, sep, body = decision_id.rpartition(".")
        if sep and len(body) == ID_CHARS:
            return Verdict(False, reason="it is a single-network decision id: report network, floor_cpm and filled")
        if not sep or len(body) < 44 or (len(body) - 36) % 8:
            return Verdict(False, reason="not a waterfall or auction decision id of this service")
        raw = _id_bytes(body)
        if raw is None:
            return Verdict(False, reason="not a decision id of this service")
        if raw[0] != PLAN_VERSION:
            return Verdict(False, reason="it is a single-network decision id: report network, floor_cpm and filled")
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        _, _, ptag, p, k = PLAN_HEAD.unpack_from(payload)
        if len(payload) != PLAN_HEAD.size + k * PLAN_OFFER.size:
            return Verdict(False, reason="not a decision id of this service")
        if not hmac.compare_digest(mac, self._mac(self._inner_for(_PLAN_DOMAIN, placement, variant), payload)):
            if ptag != tag(placement):
                return Verdict(False, reason=f"it was issued for another placement than {placement!r}")
            return Verdict(False, reason="its signature does not verify (altered, forged, or signed with another key)")
        offers = [PLAN_OFFER.unpack_from(payload, PLAN_HEAD.size + i * PLAN_OFFER.size) for i in range(k)]
        for network, floor_cpm in responses:
            floors = [f for t, f in offers if t == tag(network)]
            if not floors:
                return Verdict(False, reason=f"network {network!r} was not in the decision's plan")
            if not any(abs(floor_cpm - f) <= FLOOR_ABS_TOLERANCE + FLOOR_REL_TOLERANCE * abs(f) for f in floors):
                return Verdict(
                    False,
                    reason=f"network {network!r} was offered floor_cpm {floors[0]:.6g}, the event has {floor_cpm:g}",
                )
        return Verdict(True, variant, _PROPENSITY_OF[p], 1.0, math.nan)


def load_or_create_key(state_dir: str | os.PathLike) -> bytes:
    """The key in ``state_dir/decision.key``, created (32 random bytes, mode 0600, written
    atomically) if absent. Call it under the state dir's lock."""
    path = Path(state_dir) / KEY_FILE
    if path.exists():
        key = path.read_bytes()
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("decision key %s is readable by others (mode %o); chmod 600 it", path, mode)
        if len(key) < 16:
            raise InvalidConfig(f"decision key {str(path)!r} is shorter than 16 bytes; remove it to make a new one")
        return key
    key = os.urandom(KEY_BYTES)
    tmp = path.with_name(KEY_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key


def key_from_setting(value: str) -> bytes:
    """A configured key (``ADBANDIT_DECISION_KEY``): any string of at least 16 characters."""
    key = value.encode()
    if len(key) < 16:
        raise InvalidConfig("ADBANDIT_DECISION_KEY must be at least 16 characters")
    return key
