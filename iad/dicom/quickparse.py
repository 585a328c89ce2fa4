"""A minimal top-level DICOM element walker for the common little-endian files.

pydicom's reader costs a few microseconds per element plus a fixed ~150 µs per file; for a series of
hundreds of small files that dominates reading. This walker only locates the wanted top-level
elements and the pixel data in the first bytes of the file. It declines (returns None) whenever the
file is anything but plain: no 'DICM' preamble, big-endian or deflated syntax, functional-group
sequences (enhanced multi-frame), odd VRs, or a header longer than the bytes read; pydicom then
reads the file instead.
"""

from __future__ import annotations

from dataclasses import dataclass
import struct
from typing import BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, ImplicitVRLittleEndian

HEAD_BYTES = 64 * 1024
PIXEL_DATA_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}  # float, double float, Pixel Data
_TRANSFER_SYNTAX = 0x00020010
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_TAG_LENGTH = struct.Struct("<HHL")
_TAG_VR_SHORT_LENGTH = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<L")


Elements = Dataset | dict[int, RawDataElement]


class _Decline(Exception):
    """Something this walker leaves to pydicom."""


@dataclass(frozen=True)
class ParsedHeader:
    """Wanted top-level elements, the transfer syntax and where the pixel data element starts."""

    elements: Elements  # a dict from quick_parse, a pydicom Dataset otherwise
    syntax: UID | None
    little_endian: bool
    pixel_tell: int  # file offset of the pixel data element's tag
    pixel_element: bytes  # its first 12 bytes (tag, VR, length)


def quick_parse(fp: BinaryIO, wanted: set[int], declined: set[int]) -> ParsedHeader | None:
    """Parse `fp` from its start, or return None when pydicom must do it (file position then undefined).

    `wanted`: top-level tags to keep. `declined`: tags whose presence hands the file to pydicom.
    """
    head = fp.read(HEAD_BYTES)
    if head[128:132] != b"DICM":
        return None
    try:
        pos, syntax = _read_meta(head, 132)
        if syntax == ImplicitVRLittleEndian:
            implicit = True
        elif syntax.is_transfer_syntax and syntax.is_little_endian and not syntax.is_deflated:
            implicit = False
        else:
            return None
        elements, pixel_tell = _walk_dataset(head, pos, implicit, wanted, declined)
        return ParsedHeader(elements, syntax, True, pixel_tell, _value(head, pixel_tell, 12))
    except (_Decline, struct.error):
        return None


def _read_meta(head: bytes, pos: int) -> tuple[int, UID]:
    """Walk the explicit-VR group 0002; return the dataset start and the transfer syntax."""
    syntax = None
    while _TAG_LENGTH.unpack_from(head, pos)[0] == 0x0002:
        tag, _, value_pos, length = _explicit_element(head, pos)
        if tag == _TRANSFER_SYNTAX:
            syntax = UID(_value(head, value_pos, length).decode("latin-1").strip("\x00 "))
        pos = value_pos + length
    if syntax is None:
        raise _Decline
    return pos, syntax


def _walk_dataset(
    head: bytes, pos: int, implicit: bool, wanted: set[int], declined: set[int]
) -> tuple[dict[int, RawDataElement], int]:
    elements = {}
    while True:
        tag, vr, value_pos, length = _element_header(head, pos, implicit)
        if tag >= 0x7FE00008:
            if tag not in PIXEL_DATA_TAGS:
                raise _Decline
            return elements, pos
        if tag in declined:
            raise _Decline
        if length == _UNDEFINED_LENGTH:
            if tag in wanted:
                raise _Decline
            # an undefined-length UN holds an implicit-VR sequence (PS3.5 6.2.2)
            pos = _skip_items(head, value_pos, implicit or vr == b"UN")
            continue
        if tag in wanted:
            value = _value(head, value_pos, length)
            vr_text = vr.decode("ascii") if vr else None
            elements[tag] = RawDataElement(BaseTag(tag), vr_text, length, value, value_pos, implicit, True)
        pos = value_pos + length


def _element_header(head: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None when implicit, value position, length) of the element at `pos`."""
    if implicit:
        group, elem, length = _TAG_LENGTH.unpack_from(head, pos)
        return group << 16 | elem, None, pos + 8, length
    return _explicit_element(head, pos)


def _explicit_element(head: bytes, pos: int) -> tuple[int, bytes, int, int]:
    """(tag, VR, value position, length) of the explicit-VR little-endian element at `pos`."""
    group, elem, vr, length = _TAG_VR_SHORT_LENGTH.unpack_from(head, pos)
    tag = group << 16 | elem
    if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):  # delimiters carry no VR
        return tag, b"", pos + 8, _LONG_LENGTH.unpack_from(head, pos + 4)[0]
    if not (vr.isalpha() and vr.isupper()):
        raise _Decline  # a VR switch or corrupt data: pydicom knows the workarounds
    if vr in _LONG_LENGTH_VRS:
        return tag, vr, pos + 12, _LONG_LENGTH.unpack_from(head, pos + 8)[0]
    return tag, vr, pos + 8, length


def _skip_items(head: bytes, pos: int, implicit: bool) -> int:
    """Position after an undefined-length value: items (or fragments) up to the sequence delimiter."""
    while True:
        group, elem, length = _TAG_LENGTH.unpack_from(head, pos)
        tag, pos = group << 16 | elem, pos + 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Decline
        pos = _skip_item_elements(head, pos, implicit) if length == _UNDEFINED_LENGTH else pos + length


def _skip_item_elements(head: bytes, pos: int, implicit: bool) -> int:
    """Position after an undefined-length item: its elements up to the item delimiter."""
    while True:
        tag, vr, value_pos, length = _element_header(head, pos, implicit)
        if tag == _ITEM_END:
            return value_pos
        if length == _UNDEFINED_LENGTH:
            pos = _skip_items(head, value_pos, implicit or vr == b"UN")
        else:
            pos = value_pos + length


def _value(head: bytes, pos: int, length: int) -> bytes:
    if pos + length > len(head):
        raise _Decline  # header runs past the bytes read
    return head[pos : pos + length]
