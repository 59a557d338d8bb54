"""The AVP dictionary: names, base types and flag rules, read from
``protocols/diameter/dictionaries/*.dict`` (base RFC 6733, RFC 4006 credit control,
3GPP Gy), package data of this package.

The codec needs it for three things: which AVPs are Grouped (to walk them), the fixed
payload length of numeric types (a wrong length is 5014), and which AVPs are known at
all (an unknown AVP with the M bit is 5001).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DICT_DIR = Path(os.environ.get(
    "OCS_DIAMETER_DICT_DIR",
    Path(__file__).resolve().parent / "dictionaries"))

TYPES = frozenset({
    "OctetString", "Integer32", "Integer64", "Unsigned32", "Unsigned64", "Float32",
    "Float64", "Grouped", "Address", "Time", "UTF8String", "DiameterIdentity",
    "DiameterURI", "Enumerated", "IPFilterRule",
})
FIXED_LENGTH = {
    "Integer32": 4, "Unsigned32": 4, "Float32": 4, "Enumerated": 4, "Time": 4,
    "Integer64": 8, "Unsigned64": 8, "Float64": 8,
}
"""Payload length of the fixed-size types; also the zero-filled size of a missing AVP."""


class DictionaryError(ValueError):
    """A malformed dictionary file; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class AvpDef:
    name: str
    code: int
    type: str
    mandatory: bool
    vendor: int = 0

    @property
    def fixed_length(self) -> int | None:
        return FIXED_LENGTH.get(self.type)


class Dictionary:
    def __init__(self, defs: list[AvpDef]):
        self.by_key: dict[tuple[int, int], AvpDef] = {}
        self.by_name: dict[str, AvpDef] = {}
        for d in defs:
            if (d.code, d.vendor) in self.by_key or d.name in self.by_name:
                raise DictionaryError(f"AVP {d.name} ({d.code}/{d.vendor}) defined twice")
            self.by_key[(d.code, d.vendor)] = d
            self.by_name[d.name] = d
        self.shape: dict[tuple[int, int], int] = {
            k: -1 if d.type == "Grouped" else FIXED_LENGTH.get(d.type, 0)
            for k, d in self.by_key.items()}
        """(code, vendor) -> -1 Grouped, else the fixed payload length (0: any length):
        what the codec's check needs per AVP, in one lookup."""

    def get(self, code: int, vendor: int = 0) -> AvpDef | None:
        return self.by_key.get((code, vendor))

    def __getitem__(self, name: str) -> AvpDef:
        return self.by_name[name]

    def __len__(self) -> int:
        return len(self.by_key)


def parse(text: str, source: str = "<text>") -> list[AvpDef]:
    defs = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split()
        if not line:
            continue
        if line[0] != "AVP" or len(line) not in (5, 6):
            raise DictionaryError(f"{source}:{n}: expected 'AVP name code type flags [vendor]'")
        _, name, code, typ, flags, *vendor = line
        if typ not in TYPES:
            raise DictionaryError(f"{source}:{n}: unknown type {typ}")
        if flags not in ("M", "-"):
            raise DictionaryError(f"{source}:{n}: flags must be M or -")
        try:
            defs.append(AvpDef(name, int(code), typ, flags == "M", int(vendor[0]) if vendor else 0))
        except ValueError as exc:
            raise DictionaryError(f"{source}:{n}: {exc}") from exc
    return defs


def load(directory: Path = DICT_DIR) -> Dictionary:
    defs: list[AvpDef] = []
    for path in sorted(directory.glob("*.dict")):
        defs.extend(parse(path.read_text(encoding="utf-8"), str(path)))
    if not defs:
        raise DictionaryError(f"{directory}: no *.dict files")
    return Dictionary(defs)


DEFAULT = load()
