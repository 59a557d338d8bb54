"""SMS character sets: GSM 03.38 (default alphabet + extension table), for counting and
showing message text."""

from __future__ import annotations

_GSM_BASIC = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
              "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
_GSM_EXT = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[", 0x3D: "~",
            0x3E: "]", 0x40: "|", 0x65: "€"}


def decode_gsm7(data: bytes) -> str:
    """GSM 03.38 default alphabet, unpacked (one septet per octet, as on SMPP), with the
    extension table behind 0x1B."""
    out = []
    esc = False
    for b in data:
        if esc:
            out.append(_GSM_EXT.get(b, " "))
            esc = False
        elif b == 0x1B:
            esc = True
        else:
            out.append(_GSM_BASIC[b] if b < 128 else "?")
    return "".join(out)


def count_characters(payload: bytes, data_coding: int) -> int:
    """Characters of an SMS body: GSM 03.38 septets with an escape pair counting as one
    character, UCS-2 code units, or octets for the other codings."""
    if data_coding == 0x08:
        return len(payload) // 2
    if data_coding == 0x00:
        return len(decode_gsm7(payload))
    return len(payload)
